"""Gates pass on evidence, never on its absence.

The first half checks the pure decision (`gates.decide`) on hand-made evidence, without a
database. The second half drives real rollouts through `gates.step`, as Celery beat does.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from fleet.models import Bundle, DeviceEvent, Group, Rollout
from fleet.models.rollouts import DEFAULT_GATES
from fleet.rollouts import engine as rollouts
from fleet.rollouts import gates
from fleet.rollouts.gates import VariantEvidence, WaveEvidence
from fleet.telemetry import evidence
from tests.fleet.publish_helpers import (
    TestDevice,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)
from tests.fleet.telemetry_helpers import ingest


def _gate(**overrides: Any) -> Any:
    return {**DEFAULT_GATES, **overrides}.get


def _seen(devices: list[str], golden: float | None = 1.0, requests: int = 0) -> Any:
    new = evidence.BundleEvidence(devices_reporting=set(devices), requests=requests)
    if golden is not None:
        new.golden = dict.fromkeys(devices, golden)
    return new


def _wave(
    devices: list[str],
    *,
    installed: list[str] | None = None,
    failed: list[str] | None = None,
    new: evidence.BundleEvidence | None = None,
    elapsed: float = 0.0,
    new_devices: int | None = None,
) -> WaveEvidence:
    outcomes = {d: "installed" for d in installed or []} | {d: "failed" for d in failed or []}
    part = VariantEvidence(devices, outcomes, new or evidence.BundleEvidence())
    return WaveEvidence(
        wave_devices=len(devices),
        new_devices=len(devices) if new_devices is None else new_devices,
        elapsed_seconds=elapsed,
        variants={"b-1": part} if devices else {},
    )


def test_it_waits_after_the_soak_while_the_golden_and_error_gates_have_no_evidence() -> None:
    # The old engine succeeded here: installs reported, soak over, telemetry not yet in.
    wave = _wave(["d1"], installed=["d1"], elapsed=700)
    decision = gates.decide(wave, _gate(), soak_seconds=600)
    status = {r.name: r.status for r in decision.results}
    assert decision.outcome == "wait"
    assert status["golden_agreement"] == "wait" and status["error_rate"] == "wait"
    assert any(
        item.startswith("golden_agreement: golden self-test") for item in decision.waiting_for
    )


def test_it_passes_once_every_enabled_gate_has_its_evidence_and_the_soak_is_over() -> None:
    evidence_in = _seen(["d1", "d2"])
    soaking = _wave(["d1", "d2"], installed=["d1", "d2"], new=evidence_in, elapsed=100)
    decision = gates.decide(soaking, _gate(), soak_seconds=300)
    assert decision.outcome == "wait" and decision.waiting_for == ["soak: 200 s of 300 s left"]
    soaked = _wave(["d1", "d2"], installed=["d1", "d2"], new=evidence_in, elapsed=300)
    assert gates.decide(soaked, _gate(), soak_seconds=300).outcome == "pass"


def test_it_pauses_a_wave_whose_evidence_never_came_and_names_what_is_missing() -> None:
    wave = _wave(["d1", "d2"], installed=["d1"], new=_seen(["d1"]), elapsed=1800)
    decision = gates.decide(wave, _gate(min_devices_reporting=2), soak_seconds=0)
    assert decision.outcome == "pause"
    assert "no evidence within 1800 s" in decision.reason
    assert "1 more device(s) running the bundle" in decision.reason
    assert "golden self-test results from 1 more device(s)" in decision.reason
    # Before the timeout, the same wave only waits.
    early = _wave(["d1", "d2"], installed=["d1"], new=_seen(["d1"]), elapsed=1799)
    assert gates.decide(early, _gate(min_devices_reporting=2), soak_seconds=0).outcome == "wait"


def test_an_empty_wave_never_passes() -> None:
    decision = gates.decide(_wave([], elapsed=10_000), _gate(), soak_seconds=0)
    assert decision.outcome == "pause" and "devices_reporting" in decision.reason


def test_a_failure_fails_at_once_without_waiting_for_the_minimum() -> None:
    wave = _wave(["d1", "d2", "d3"], failed=["d1"], elapsed=0)
    decision = gates.decide(wave, _gate(min_devices_reporting=3), soak_seconds=600)
    assert decision.outcome == "fail" and "install_failure_rate" in decision.reason
    low = _wave(["d1"], installed=["d1"], new=_seen(["d1"], golden=0.5))
    assert gates.decide(low, _gate(), soak_seconds=600).outcome == "fail"


def test_a_wave_that_adds_no_device_needs_no_new_soak() -> None:
    again = _wave(["d1"], installed=["d1"], new=_seen(["d1"]), elapsed=0, new_devices=0)
    assert gates.decide(again, _gate(), soak_seconds=600).outcome == "pass"


def test_disabled_gates_and_min_requests_are_honoured() -> None:
    no_golden = _wave(["d1"], installed=["d1"], new=_seen(["d1"], golden=None))
    assert gates.decide(no_golden, _gate(min_golden_agreement=None), 0).outcome == "pass"
    quiet = _wave(["d1"], installed=["d1"], new=_seen(["d1"], requests=3))
    decision = gates.decide(quiet, _gate(min_requests=50), 0)
    assert decision.outcome == "wait" and "error_rate: 47 more requests" in decision.waiting_for


def test_a_comparison_with_a_baseline_waits_for_as_many_samples() -> None:
    old = evidence.BundleEvidence(latency_counts=[0, 30] + [0] * 41)
    part = VariantEvidence(["d1"], {"d1": "installed"}, _seen(["d1"]), baseline=old)
    wave = WaveEvidence(1, 1, 0.0, {"b-1": part})
    decision = gates.decide(wave, _gate(), soak_seconds=0)
    assert decision.outcome == "wait"
    assert decision.waiting_for == ["p95_latency_ratio: 20 more latency samples (baseline has 20+)"]


# --- real rollouts --------------------------------------------------------------------


@pytest.fixture
def one_device(db: None) -> tuple[Group, TestDevice]:
    group = Group.objects.create(name="bench", selector="site=bench")
    device = make_device("pi-bench")
    device.device.labels = {"site": "bench"}
    device.device.save()
    return group, device


def _bundle(tmp_path: Path) -> Bundle:
    return publish_now(make_version(onnx_files(tmp_path)))


def _age_wave(rollout: Rollout, seconds: float) -> None:
    wave_start = Rollout.objects.get(pk=rollout.pk).wave_started_at
    Rollout.objects.filter(pk=rollout.pk).update(
        wave_started_at=wave_start - timedelta(seconds=seconds)
    )


def _self_test_reported(device: TestDevice, bundle: Bundle) -> None:
    golden = {"runs": 1, "failed": 0, "min_agreement": 1.0}
    assert ingest(device.device, {"bundles": [{"bundle": bundle.pk, "golden": golden}]})


@pytest.mark.django_db
def test_a_rollout_is_not_marked_succeeded_after_its_soak_without_telemetry(
    one_device: tuple[Group, TestDevice],
    tmp_path: Path,
    alice: Any,
    alice_api: Any,
    client: Client,
) -> None:
    group, device = one_device
    bundle = _bundle(tmp_path)
    rollout = rollouts.create(
        user=alice, bundle=bundle, group=group, waves=[100], gates={}, soak_seconds=60
    )
    DeviceEvent.objects.create(device=device.device, bundle=bundle.pk, state="active")
    _age_wave(rollout, 120)
    assert gates.step(rollout) == "wait"
    rollout.refresh_from_db()
    assert rollout.status == "running"
    waiting = rollouts.waiting_for(rollout)
    assert any(w.startswith("golden_agreement") for w in waiting), waiting
    body = alice_api.get(f"/api/v1/rollouts/{rollout.pk}").json()
    assert body["waiting_for"] == waiting
    client.force_login(alice)
    page = client.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert "Waiting for:" in page and "golden self-test results from 1 more device" in page

    # Evidence never arrives: the wave pauses with that reason; it never succeeds.
    _age_wave(rollout, 1800)
    assert gates.step(rollout) == "pause"
    rollout.refresh_from_db()
    assert rollout.status == "paused" and "no evidence within 1800 s" in rollout.reason
    assert "golden_agreement" in rollout.reason


@pytest.mark.django_db
def test_the_default_rollout_on_a_one_device_group_finishes_after_one_soak(
    one_device: tuple[Group, TestDevice], tmp_path: Path, alice_api: Any
) -> None:
    group, device = one_device
    bundle = _bundle(tmp_path)
    created = alice_api.post(
        "/api/v1/rollouts", {"bundle": bundle.pk, "group": group.pk, "gates": {}}
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["waves"] == [10, 50, 100] and body["soak_seconds"] == 300
    rollout = Rollout.objects.get(pk=body["id"])
    DeviceEvent.objects.create(device=device.device, bundle=bundle.pk, state="active")
    _self_test_reported(device, bundle)
    assert gates.step(rollout) == "wait"  # soaking
    assert rollouts.waiting_for(Rollout.objects.get(pk=rollout.pk))[0].startswith("soak:")
    _age_wave(rollout, 300)
    # Waves 2 and 3 hold the same single device: nothing new to soak.
    assert [gates.step(rollout) for _ in range(3)] == ["pass", "pass", "pass"]
    rollout.refresh_from_db()
    assert rollout.status == "succeeded"
