"""Rollouts: waves over a group, gates on in-field evidence, operator actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from fleet.models import Group, Rollout
from fleet.rollouts import engine as rollouts
from fleet.rollouts import gates
from fleet.security import director
from fleet.telemetry import evidence
from tests.fleet.publish_helpers import (
    TestDevice,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)
from tests.fleet.rollout_helpers import _assigned, _bundle, _report, _telemetry

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet_of_four(db: None) -> tuple[Group, list[TestDevice]]:
    group = Group.objects.create(name="plant-3", selector="site=plant-3")
    devices = [make_device(f"pi-{i}") for i in range(4)]
    for d in devices:
        d.device.labels = {"site": "plant-3"}
        d.device.save()
    return group, devices


def test_a_rollout_assigns_waves_and_promotes_on_passing_gates(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, devices = fleet_of_four
    bundle = _bundle(tmp_path)
    rollout = rollouts.create(
        user=alice, bundle=bundle, group=group, waves=[50, 100], gates={}, soak_seconds=0
    )
    first_wave = [d for d in devices if _assigned(d) == bundle.pk]
    assert len(first_wave) == 2
    assert gates.step(rollout) == "wait"  # nobody reported yet
    for d in first_wave:
        _report(d, bundle)
        _telemetry(d, bundle)
    assert gates.step(rollout) == "pass"
    rollout.refresh_from_db()
    assert rollout.current_wave == 1
    assert all(_assigned(d) == bundle.pk for d in devices)
    for d in devices:
        _report(d, bundle)
    assert gates.step(rollout) == "pass"
    rollout.refresh_from_db()
    assert rollout.status == "succeeded"
    actions = list(rollout.events.order_by("at", "id").values_list("action", flat=True))
    assert actions == ["create", "start", "promote", "succeed"]


def test_a_failing_self_test_rolls_the_wave_back_to_the_previous_bundle(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, devices = fleet_of_four
    old = _bundle(tmp_path / "old")
    for d in devices:
        director.assign(d.device, old)
    new = publish_now(make_version(onnx_files(tmp_path), name="minilm intent"))
    rollout = rollouts.create(
        user=alice, bundle=new, group=group, waves=[25, 100], gates={}, soak_seconds=0
    )
    (canary,) = [d for d in devices if _assigned(d) == new.pk]
    _report(canary, new, "failed", "golden self-test failed: agreement 0.07 < 0.95")
    assert gates.step(rollout) == "fail"
    rollout.refresh_from_db()
    assert rollout.status == "rolled_back"
    assert "install_failure_rate" in rollout.reason
    assert all(_assigned(d) == old.pk for d in devices)


def test_low_golden_agreement_pauses_when_configured(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, devices = fleet_of_four
    bundle = _bundle(tmp_path)
    rollout = rollouts.create(
        user=alice,
        bundle=bundle,
        group=group,
        waves=[100],
        gates={"on_failure": "pause", "min_golden_agreement": 0.99},
        soak_seconds=0,
    )
    for d in devices:
        _report(d, bundle)
        _telemetry(d, bundle, golden=0.9)
    assert gates.step(rollout) == "fail"
    rollout.refresh_from_db()
    assert rollout.status == "paused" and "golden_agreement" in rollout.reason


def test_slower_p95_than_before_on_the_same_devices_fails(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, devices = fleet_of_four
    old = _bundle(tmp_path / "old")
    for d in devices:
        director.assign(d.device, old)
        _telemetry(d, old, latency_bucket=10)
    new = publish_now(make_version(onnx_files(tmp_path), name="minilm intent"))
    rollout = rollouts.create(
        user=alice, bundle=new, group=group, waves=[100], gates={}, soak_seconds=0
    )
    for d in devices:
        _report(d, new)
        _telemetry(d, new, latency_bucket=20)  # ~3x slower
    decision, results = gates.evaluate(Rollout.objects.get(pk=rollout.pk))
    latency = next(r for r in results if r.name == "p95_latency_ratio")
    assert decision == "fail" and latency.status == "fail" and latency.value > 1.5


def test_the_accuracy_test_needs_evidence_not_noise() -> None:
    # 80% vs 90% on 1000 samples each: clearly worse than a 2-point margin.
    assert evidence.accuracy_drop_is_significant(800, 1000, 900, 1000, 2.0)[0]
    # 88% vs 90% on 50 samples: within noise, do not fail.
    assert not evidence.accuracy_drop_is_significant(44, 50, 45, 50, 2.0)[0]
    # Better than before: never fails.
    assert not evidence.accuracy_drop_is_significant(950, 1000, 900, 1000, 2.0)[0]


def test_one_active_rollout_per_group(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, _ = fleet_of_four
    bundle = _bundle(tmp_path)
    rollouts.create(user=alice, bundle=bundle, group=group, waves=[100], gates={})
    with pytest.raises(rollouts.RolloutConflictError, match="already has an active rollout"):
        rollouts.create(user=alice, bundle=bundle, group=group, waves=[100], gates={})


@pytest.mark.parametrize(
    ("waves", "gates_", "message"),
    [
        ([50, 10, 100], {}, "increase"),
        ([10, 50], {}, "end at 100"),
        ([], {}, "list"),
        ([100], {"bogus": 1}, "unknown gates"),
        ([100], {"on_failure": "explode"}, "on_failure"),
    ],
)
def test_bad_plans_are_refused(
    alice_api: Any,
    fleet_of_four: tuple[Group, list[TestDevice]],
    tmp_path: Path,
    waves: list[int],
    gates_: dict[str, Any],
    message: str,
) -> None:
    group, _ = fleet_of_four
    bundle = _bundle(tmp_path)
    response = alice_api.post(
        "/api/v1/rollouts",
        {"bundle": bundle.pk, "group": group.pk, "waves": waves, "gates": gates_},
    )
    assert response.status_code == 400 and message in response.json()["error"]
    assert not Rollout.objects.exists()


def test_operator_actions_through_the_api(
    alice_api: Any, bob_api: Any, tmp_path: Path, fleet_of_four: tuple[Group, list[TestDevice]]
) -> None:
    group, devices = fleet_of_four
    bundle = _bundle(tmp_path)
    created = alice_api.post(
        "/api/v1/rollouts", {"bundle": bundle.pk, "group": group.pk, "waves": [25, 100]}
    )
    assert created.status_code == 201, created.content
    rid = created.json()["id"]
    assert bob_api.post(f"/api/v1/rollouts/{rid}/pause").status_code == 403
    assert (
        alice_api.post(f"/api/v1/rollouts/{rid}/pause", {"reason": "lunch"}).json()["status"]
        == "paused"
    )
    assert alice_api.post(f"/api/v1/rollouts/{rid}/pause").status_code == 409
    assert alice_api.post(f"/api/v1/rollouts/{rid}/resume").json()["status"] == "running"
    promoted = alice_api.post(f"/api/v1/rollouts/{rid}/promote").json()
    assert promoted["current_wave"] == 1 and all(_assigned(d) == bundle.pk for d in devices)
    rolled = alice_api.post(f"/api/v1/rollouts/{rid}/rollback", {"reason": "bad vibes"}).json()
    assert rolled["status"] == "rolled_back"
    assert all(_assigned(d) is None for d in devices)
    # A second click loses cleanly.
    again = alice_api.post(f"/api/v1/rollouts/{rid}/promote")
    assert again.status_code == 409 and "rolled_back" in again.json()["error"]
    assert alice_api.post(f"/api/v1/rollouts/{rid}/explode").status_code == 404
    events = alice_api.get(f"/api/v1/rollouts/{rid}").json()["events"]
    assert {e["action"] for e in events} >= {"pause", "resume", "promote", "rollback"}


def test_devices_joining_mid_rollout_get_their_waves_bundle(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, _ = fleet_of_four
    bundle = _bundle(tmp_path)
    rollout = rollouts.create(
        user=alice, bundle=bundle, group=group, waves=[100], gates={}, soak_seconds=3600
    )
    late = make_device("late")
    late.device.labels = {"site": "plant-3"}
    late.device.save()
    gates.step(rollout)
    assert _assigned(late) == bundle.pk


def test_one_crashing_rollout_does_not_stall_the_others(
    tmp_path: Path, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path)
    first = rollouts.create(
        user=alice, bundle=bundle, group=Group.objects.create(name="a"), waves=[100], gates={}
    )
    second = rollouts.create(
        user=alice, bundle=bundle, group=Group.objects.create(name="b"), waves=[100], gates={}
    )
    real = gates.gather

    def flaky(rollout: Rollout, now: Any = None) -> Any:
        if rollout.pk == first.pk:
            raise RuntimeError("corrupt telemetry")
        return real(rollout)

    monkeypatch.setattr(gates, "gather", flaky)
    outcome = gates.step_all()
    assert outcome[first.pk] == "error" and outcome[second.pk] in ("wait", "pass")


def test_state_endpoint_answers_304_until_the_assignment_changes(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    from django.test import Client

    _, devices = fleet_of_four
    device = devices[0]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {device.credential}")
    first = client.get("/api/device/v1/state")
    assert first.status_code == 200 and first.json()["desired"]["bundle"] is None
    etag = first["ETag"]
    assert client.get("/api/device/v1/state", HTTP_IF_NONE_MATCH=etag).status_code == 304
    bundle = _bundle(tmp_path)
    director.assign(device.device, bundle)
    changed = client.get("/api/device/v1/state", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed.json()["desired"]["bundle"] == bundle.pk
    assert timezone.now()


def test_a_draft_rollout_starts_on_resume_or_can_be_cancelled(
    fleet_of_four: tuple[Group, list[TestDevice]], tmp_path: Path, alice: Any
) -> None:
    group, devices = fleet_of_four
    bundle = _bundle(tmp_path)
    draft = rollouts.create(
        user=alice, bundle=bundle, group=group, waves=[100], gates={}, start=False
    )
    assert draft.status == "draft" and not any(_assigned(d) for d in devices)
    started = rollouts.resume(draft, alice)
    assert started.status == "running" and all(_assigned(d) == bundle.pk for d in devices)
    other = rollouts.create(
        user=alice,
        bundle=bundle,
        group=Group.objects.create(name="x"),
        waves=[100],
        gates={},
        start=False,
    )
    assert rollouts.cancel(other, alice).status == "cancelled"
