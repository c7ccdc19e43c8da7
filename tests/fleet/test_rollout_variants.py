"""Rollouts with variants: each device gets the bundle its arch and runtimes can run, or a
"no compatible variant" status; the API, the pages, waves, gates and rollback follow.
Bundles are really published (signed, encrypted) and assigned through the director, on
PostgreSQL when DATABASE_URL points at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from fleet.models import Bundle, BundleStatus, Rollout, RolloutEvent, RolloutVariant
from fleet.rollouts import engine as rollouts
from fleet.rollouts import gates
from fleet.security import director
from tests.fleet.rollout_helpers import _assigned, _report, _telemetry
from tests.fleet.variant_helpers import mixed_group, onnx_bundle, tflite_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture
def release(tmp_path: Path) -> tuple[Bundle, Bundle]:
    return onnx_bundle(tmp_path), tflite_bundle(tmp_path)


def test_it_gives_each_device_the_variant_it_can_run(
    release: tuple[Bundle, Bundle], alice_api: Any
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 2, "litert": 2, "both": 1, "armv7": 1, "old-ort": 1})
    created = alice_api.post(
        "/api/v1/rollouts",
        {"variants": [onnx.pk, tflite.pk], "group": group.pk, "waves": [100], "soak_seconds": 0},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["bundle"] == onnx.pk and body["status"] == "running"
    assert [d for d in fleet["onnx"] + fleet["both"] if _assigned(d) != onnx.pk] == []
    assert [d for d in fleet["litert"] if _assigned(d) != tflite.pk] == []
    assert [_assigned(d) for d in fleet["armv7"] + fleet["old-ort"]] == [None, None]
    assert body["devices_in_wave"] == 5
    assert [(v["bundle"], v["runtime"], v["devices"]) for v in body["variants"]] == [
        (onnx.pk, "onnxruntime", 3),
        (tflite.pk, "litert", 2),
    ]
    reasons = {d["name"]: d["reason"] for d in body["no_compatible_variant"]}
    assert set(reasons) == {"armv7-0", "old-ort-0"}
    assert "the device is armv7l" in reasons["armv7-0"]
    assert "needs onnxruntime >= 1.17, the device has 1.10.0" in reasons["old-ort-0"]
    device = alice_api.get(f"/api/v1/devices/{fleet['armv7'][0].id}").json()
    assert device["rollouts"][0]["status"] == "no compatible variant"
    assert device["rollouts"][0]["bundle"] is None
    device = alice_api.get(f"/api/v1/devices/{fleet['litert'][0].id}").json()
    assert device["rollouts"][0]["bundle"] == tflite.pk
    stored = RolloutVariant.objects.filter(rollout_id=body["id"]).order_by("position")
    assert [v.bundle_id for v in stored] == [onnx.pk, tflite.pk]


def test_it_keeps_the_single_bundle_api_and_prepends_bundle_to_variants(
    release: tuple[Bundle, Bundle], alice_api: Any
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"litert": 1})
    created = alice_api.post(
        "/api/v1/rollouts", {"bundle": tflite.pk, "variants": [onnx.pk], "group": group.pk}
    )
    assert created.status_code == 201, created.content
    assert [v["bundle"] for v in created.json()["variants"]] == [tflite.pk, onnx.pk]
    assert _assigned(fleet["litert"][0]) == tflite.pk


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other model", "same model"),
        ("unpublished", "is not published"),
        ("same runtime", "one variant per runtime"),
        ("repeated", "listed more than once"),
        ("unknown", "does not exist"),
        ("bundle not first", "not first"),
        ("nothing", "give a bundle"),
    ],
)
def test_it_refuses_bad_variants_and_creates_nothing(
    case: str, message: str, release: tuple[Bundle, Bundle], alice_api: Any, tmp_path: Path
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 1, "litert": 1})
    body: dict[str, Any] = {"group": group.pk, "variants": [onnx.pk, tflite.pk]}
    if case == "other model":
        body["variants"] = [onnx.pk, tflite_bundle(tmp_path, model="other").pk]
    elif case == "unpublished":
        Bundle.objects.filter(pk=tflite.pk).update(status=BundleStatus.FAILED)
    elif case == "same runtime":
        body["variants"] = [onnx.pk, onnx_bundle(tmp_path).pk]
    elif case == "repeated":
        body["variants"] = [onnx.pk, tflite.pk, onnx.pk]
    elif case == "unknown":
        body["variants"] = [onnx.pk, "b-000000000000"]
    elif case == "bundle not first":
        body["bundle"] = tflite.pk
    else:
        body["variants"] = []
    response = alice_api.post("/api/v1/rollouts", body)
    assert response.status_code == 400, response.content
    assert message in response.json()["error"]
    assert not Rollout.objects.exists() and not RolloutVariant.objects.exists()
    assert not RolloutEvent.objects.exists()
    assert [_assigned(d) for d in fleet["onnx"] + fleet["litert"]] == [None, None]


def test_it_previews_devices_per_variant_before_starting(
    release: tuple[Bundle, Bundle], alice_api: Any, bob_api: Any
) -> None:
    onnx, tflite = release
    group, _ = mixed_group({"onnx": 2, "litert": 1, "tflite-rt": 1})
    url = f"/api/v1/rollouts/preview?group={group.pk}&bundles={onnx.pk},{tflite.pk}"
    preview = bob_api.get(url).json()  # a viewer may look
    assert [v["devices"] for v in preview["variants"]] == [2, 1]
    assert preview["no_compatible_variant"] == 1 and preview["devices"] == 4
    assert preview["incompatible"][0]["name"] == "tflite-rt-0"
    clash = alice_api.get(f"/api/v1/rollouts/preview?group={group.pk}&bundles={onnx.pk},{onnx.pk}")
    assert clash.status_code == 400 and "more than once" in clash.json()["error"]
    assert not Rollout.objects.exists()


def test_waves_and_gates_count_only_devices_some_variant_fits(
    release: tuple[Bundle, Bundle], alice: Any
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 2, "litert": 2, "armv7": 4})
    rollout = rollouts.create(
        user=alice,
        bundle=onnx,
        variants=[tflite],
        group=group,
        waves=[50, 100],
        gates={},
        soak_seconds=0,
    )
    wave = rollouts.wave_plan(rollout)
    assert len(wave) == 2  # half of the 4 devices that can take part, not of all 8
    for device, bundle in wave:
        dev = next(d for ds in fleet.values() for d in ds if d.device.pk == device.pk)
        _report(dev, bundle)
        _telemetry(dev, bundle)
    assert gates.step(rollout) == "pass"  # the armv7 devices do not hold promotion back
    rollout.refresh_from_db()
    assert rollout.current_wave == 1
    for dev in fleet["onnx"]:
        _report(dev, onnx)
    for dev in fleet["litert"]:
        _report(dev, tflite, "failed", "self-test agreement 0.07")
    assert gates.step(rollout) == "fail"  # 2 of 4 failed on their own variant: above 20%
    rollout.refresh_from_db()
    assert rollout.status == "rolled_back"
    assert [_assigned(d) for ds in fleet.values() for d in ds] == [None] * 8


def test_a_variant_failing_on_its_few_devices_is_not_diluted_by_the_others(
    release: tuple[Bundle, Bundle], alice: Any
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 9, "litert": 1})
    rollout = rollouts.create(
        user=alice, bundle=onnx, variants=[tflite], group=group, waves=[100], gates={}
    )
    for dev in fleet["onnx"]:
        _report(dev, onnx)
    _report(fleet["litert"][0], tflite, "failed", "self-test agreement 0.07")
    assert gates.step(rollout) == "fail"  # 1 of 10 overall, but 1 of 1 on LiteRT
    rollout.refresh_from_db()
    assert rollout.status == "rolled_back"
    assert "install_failure_rate=1.0" in rollout.reason
    (gate,) = [g for g in rollout.last_evaluation["gates"] if g["name"] == "install_failure_rate"]
    assert gate["detail"].endswith(f"worst variant {tflite.pk}: 1 of 1 failed")


def test_rollback_returns_each_device_to_what_it_ran_before(
    release: tuple[Bundle, Bundle], alice: Any, tmp_path: Path
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 1, "litert": 1})
    old_onnx = onnx_bundle(tmp_path, model="previous")
    director.assign(fleet["onnx"][0].device, old_onnx)
    rollout = rollouts.create(
        user=alice, bundle=onnx, variants=[tflite], group=group, waves=[100], gates={}
    )
    assert (_assigned(fleet["onnx"][0]), _assigned(fleet["litert"][0])) == (onnx.pk, tflite.pk)
    rollouts.rollback(rollout, alice, "operator changed their mind")
    assert (_assigned(fleet["onnx"][0]), _assigned(fleet["litert"][0])) == (old_onnx.pk, None)


def test_latency_is_compared_per_variant_on_the_same_devices(
    release: tuple[Bundle, Bundle], alice: Any, tmp_path: Path
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 1, "litert": 1})
    old_onnx = onnx_bundle(tmp_path, model="previous")
    onnx_dev, litert_dev = fleet["onnx"][0], fleet["litert"][0]
    director.assign(onnx_dev.device, old_onnx)
    _telemetry(onnx_dev, old_onnx, latency_bucket=10)
    rollout = rollouts.create(
        user=alice,
        bundle=onnx,
        variants=[tflite],
        group=group,
        waves=[100],
        gates={"on_failure": "pause"},
        soak_seconds=0,
    )
    for dev, bundle in ((onnx_dev, onnx), (litert_dev, tflite)):
        _report(dev, bundle)
    # The LiteRT device is far slower, but it ran nothing before: no comparison for it.
    _telemetry(litert_dev, tflite, latency_bucket=30)
    _telemetry(onnx_dev, onnx, latency_bucket=10)
    assert gates.step(rollout) == "pass"
    rollout.refresh_from_db()
    ratio = [g for g in rollout.last_evaluation["gates"] if g["name"] == "p95_latency_ratio"]
    assert len(ratio) == 1 and ratio[0]["detail"].startswith(f"{onnx.pk}: ")
    assert ratio[0]["value"] == pytest.approx(1.0)


def test_a_rollout_no_device_can_run_pauses_with_a_reason(
    release: tuple[Bundle, Bundle], alice_api: Any
) -> None:
    onnx, _ = release
    group, fleet = mixed_group({"litert": 2})
    created = alice_api.post("/api/v1/rollouts", {"bundle": onnx.pk, "group": group.pk})
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "paused"
    assert "can run any variant" in body["reason"] and "needs onnxruntime" in body["reason"]
    assert [_assigned(d) for d in fleet["litert"]] == [None, None]
    resumed = alice_api.post(f"/api/v1/rollouts/{body['id']}/resume").json()
    assert resumed["status"] == "paused"  # still nothing fits: it says so again


def test_the_pages_show_variants_and_devices_none_fits(
    release: tuple[Bundle, Bundle], client: Client, alice: Any
) -> None:
    onnx, tflite = release
    group, fleet = mixed_group({"onnx": 1, "litert": 1, "armv7": 1})
    client.force_login(alice)
    preview = client.get(
        "/rollouts/preview/",
        {"bundle": onnx.pk, "variants": [tflite.pk], "group": group.pk},
        HTTP_HX_REQUEST="true",
    )
    assert b"no compatible variant" in preview.content and b"armv7-0" in preview.content
    # Without JavaScript the same preview comes inside the whole rollouts page.
    page = client.get(
        "/rollouts/preview/", {"bundle": onnx.pk, "variants": [tflite.pk], "group": group.pk}
    )
    assert b"New rollout" in page.content and b"armv7-0" in page.content
    clash = client.get(
        "/rollouts/preview/", {"bundle": onnx.pk, "variants": [onnx.pk], "group": group.pk}
    )
    assert b"listed more than once" in clash.content
    created = client.post(
        "/rollouts/new/",
        {"bundle": onnx.pk, "variants": [tflite.pk], "group": group.pk, "waves": "100"},
    )
    rollout = Rollout.objects.get()
    assert created.status_code == 302 and rollout.variants.count() == 2
    page = client.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert tflite.pk in page and "No compatible variant (1)" in page
    assert "the device is armv7l" in page
    device_page = client.get(f"/devices/{fleet['armv7'][0].id}/").content.decode()
    assert "no compatible variant" in device_page
    device_page = client.get(f"/devices/{fleet['litert'][0].id}/").content.decode()
    assert f"variant {tflite.pk}" in device_page
