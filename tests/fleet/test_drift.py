"""Confidence drift: PSI against the compression-time reference, on the page, in the
API and as an optional rollout gate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from tinyfleet_agent._internal.telemetry import CONFIDENCE_EDGES

from fleet.models import Bundle, DeviceEvent, Group
from fleet.rollouts import engine as rollouts
from fleet.rollouts import gates
from fleet.telemetry import drift
from tests.fleet.drift_helpers import REFERENCE, _classifier, _shifted
from tests.fleet.publish_helpers import (
    TestDevice,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)
from tests.fleet.telemetry_helpers import ingest

pytestmark = pytest.mark.django_db

REFERENCE[17], REFERENCE[18], REFERENCE[19] = 100, 300, 600


def test_it_computes_psi_on_known_distributions() -> None:
    assert drift.psi([50, 50], [50, 50]) == 0.0
    assert drift.psi([10, 30], [20, 60]) == pytest.approx(0.0)  # only shares matter
    by_hand = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(by_hand)
    # An empty reference bin counts as a share of 1e-4, so PSI stays finite.
    with_epsilon = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert drift.psi([100, 0], [50, 50]) == pytest.approx(with_epsilon)
    assert drift.psi([0, 0], [1, 1]) is None and drift.psi([1, 1], [0, 0]) is None
    with pytest.raises(ValueError):
        drift.psi([1, 2], [1, 2, 3])
    assert [drift.psi_level(v) for v in (0.05, 0.1, 0.2, 0.25, 3.0, None)] == [
        "stable",
        "moderate shift",
        "moderate shift",
        "major shift",
        "major shift",
        "",
    ]


def test_the_reference_must_use_the_agents_bins() -> None:
    good = {"reference_confidence": {"edges": list(CONFIDENCE_EDGES), "counts": REFERENCE}}
    assert drift.reference_from_metrics("text-classification", good).counts == tuple(REFERENCE)
    other_bins = {"reference_confidence": {"edges": [0.5, 1.0], "counts": [1, 2, 3]}}
    missing = drift.reference_from_metrics("text-classification", other_bins)
    assert missing.applicable and missing.counts is None and "no reference" in missing.note
    embedding = drift.reference_from_metrics("text-embedding", good)
    assert not embedding.applicable and "not applicable" in embedding.note


def _confidences(device: TestDevice, bundle: Bundle, counts: list[int]) -> None:
    # With the install self-test's result, as the agent reports it: the golden gate
    # needs it before a wave may pass.
    golden = {"runs": 1, "failed": 0, "min_agreement": 1.0}
    section = {"bundle": bundle.pk, "requests": sum(counts), "confidence": counts, "golden": golden}
    assert ingest(device.device, {"bundles": [section]})


def test_the_api_and_page_show_psi_against_the_reference(
    alice_api: Any, client: Client, alice: Any, tmp_path: Path
) -> None:
    bundle = _classifier(tmp_path)
    _confidences(make_device("a"), bundle, _shifted())
    body = alice_api.get(f"/api/v1/metrics?bundle={bundle.pk}").json()
    expected = drift.psi(REFERENCE, _shifted())
    assert expected is not None and expected > drift.PSI_MAJOR
    assert body["drift"]["psi"] == pytest.approx(expected)
    assert body["drift"]["level"] == "major shift" and body["drift"]["confidence_samples"] == 800
    assert body["drift"]["thresholds"] == {"moderate": 0.1, "major": 0.25}
    assert body["series"][0]["confidence_psi"] == pytest.approx(expected)
    client.force_login(alice)
    page = client.get(f"/bundles/{bundle.pk}/monitor/").content.decode()
    assert f"{expected:.3f}" in page and "major shift" in page and 'id="psi-chart"' in page


def test_embedding_models_show_psi_as_not_applicable(
    alice_api: Any, client: Client, alice: Any, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))  # text-embedding
    ingest(make_device().device, {"bundles": [{"bundle": bundle.pk, "requests": 3}]})
    body = alice_api.get(f"/api/v1/metrics?bundle={bundle.pk}").json()
    assert body["drift"]["applicable"] is False and body["drift"]["psi"] is None
    client.force_login(alice)
    page = client.get(f"/bundles/{bundle.pk}/monitor/").content.decode()
    assert "not applicable" in page and 'id="psi-chart"' not in page


@pytest.fixture
def wave(db: None) -> tuple[Group, list[TestDevice]]:
    group = Group.objects.create(name="drifters", selector="site=d")
    devices = [make_device(f"d-{i}") for i in range(2)]
    for d in devices:
        d.device.labels = {"site": "d"}
        d.device.save()
    return group, devices


def _rollout_with_confidences(
    wave: tuple[Group, list[TestDevice]],
    bundle: Bundle,
    alice: Any,
    gates_in: dict[str, Any],
    counts: list[int],
) -> tuple[str, dict[str, Any]]:
    group, devices = wave
    rollout = rollouts.create(
        user=alice, bundle=bundle, group=group, waves=[100], gates=gates_in, soak_seconds=0
    )
    for d in devices:
        DeviceEvent.objects.create(device=d.device, bundle=bundle.pk, state="active")
        _confidences(d, bundle, counts)
    decision = gates.step(rollout)
    rollout.refresh_from_db()
    by_name = {g["name"]: g for g in rollout.last_evaluation["gates"]}
    return decision, by_name


def test_the_psi_gate_is_off_by_default(wave: Any, alice: Any, tmp_path: Path) -> None:
    decision, results = _rollout_with_confidences(
        wave, _classifier(tmp_path), alice, {}, _shifted()
    )
    assert decision == "pass" and "confidence_psi" not in results


def test_the_psi_gate_fails_a_wave_whose_confidences_drifted(
    wave: Any, alice: Any, tmp_path: Path
) -> None:
    decision, results = _rollout_with_confidences(
        wave, _classifier(tmp_path), alice, {"max_confidence_psi": 0.25}, _shifted()
    )
    assert decision == "fail"
    assert results["confidence_psi"]["status"] == "fail"
    assert results["confidence_psi"]["value"] == pytest.approx(
        drift.psi(REFERENCE, _shifted()), abs=1e-5
    )


def test_the_psi_gate_passes_matching_confidences_and_waits_for_samples(
    wave: Any, alice: Any, tmp_path: Path
) -> None:
    same = [c // 10 for c in REFERENCE]  # 100 per device, 200 in the wave
    decision, results = _rollout_with_confidences(
        wave, _classifier(tmp_path / "a"), alice, {"max_confidence_psi": 0.1}, same
    )
    assert decision == "pass" and results["confidence_psi"]["status"] == "pass"
    few = _rollout_with_confidences(
        wave,
        _classifier(tmp_path / "b"),
        alice,
        {"max_confidence_psi": 0.1, "min_confidence_samples": 10_000},
        _shifted(),
    )
    assert few[1]["confidence_psi"]["status"] == "wait"


def test_the_psi_gate_is_not_applicable_without_a_reference(
    wave: Any, alice: Any, tmp_path: Path
) -> None:
    decision, results = _rollout_with_confidences(
        wave, _classifier(tmp_path, reference=None), alice, {"max_confidence_psi": 0.25}, _shifted()
    )
    assert decision == "pass" and results["confidence_psi"]["status"] == "n/a"


@pytest.mark.parametrize("bad", ["0.2", 0, -1, True])
def test_the_psi_gate_limit_is_validated(wave: Any, alice: Any, tmp_path: Path, bad: Any) -> None:
    group, _ = wave
    with pytest.raises(rollouts.RolloutError, match="max_confidence_psi"):
        rollouts.create(
            user=alice,
            bundle=_classifier(tmp_path),
            group=group,
            waves=[100],
            gates={"max_confidence_psi": bad},
            soak_seconds=0,
        )
