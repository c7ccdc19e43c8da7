"""Rollout gates: decide from in-field evidence whether a wave passes, waits, pauses or
fails.

Two halves. `gather` reads the database (wave, install outcomes, rollups, baselines) into
a `WaveEvidence`; `decide` is a pure function of that evidence, the rollout's gate
settings and the time the wave has run. A gate passes only on evidence: each enabled gate
has a minimum (devices, self-tests, samples) and waits until it is met. A wave advances
only when every enabled gate passed and the soak is over; a wave whose evidence has not
arrived within `evidence_timeout_seconds` pauses with the missing evidence as its
reason; it never succeeds on absence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.models import Bundle, Device, Rollout, RolloutStatus
from fleet.rollouts import engine as rollouts
from fleet.telemetry import drift, evidence

log = logging.getLogger(__name__)
# How far back the previous bundle's numbers on the same devices are taken from.
BASELINE_WINDOW = timedelta(days=7)
Gate = Callable[[str], Any]


@dataclass
class GateResult:
    name: str
    status: str  # pass | fail | wait | n/a
    value: float | None
    limit: float | None
    detail: str = ""
    needs: str = ""  # while waiting: the evidence still missing


@dataclass
class VariantEvidence:
    """What the devices serving one variant reported since the rollout started."""

    devices: list[str]
    outcomes: dict[str, str]  # device -> installed | failed
    new: evidence.BundleEvidence
    # The previous bundle on these devices (None: nothing, or a mix, to compare with).
    baseline: evidence.BundleEvidence | None = None
    drift_reference: drift.DriftReference | None = None  # only when the PSI gate is on


@dataclass
class WaveEvidence:
    wave_devices: int
    new_devices: int  # devices this wave added to the previous one
    elapsed_seconds: float  # since the wave started
    variants: dict[str, VariantEvidence] = field(default_factory=dict)


@dataclass
class Decision:
    outcome: str  # pass | wait | pause | fail
    results: list[GateResult]
    waiting_for: list[str]
    reason: str = ""


# --- gathering (database) -------------------------------------------------------------


def gather(rollout: Rollout, now: datetime | None = None) -> WaveEvidence:
    """Everything `decide` needs about the rollout's current wave, read from rollups."""
    now = now or timezone.now()
    plan = rollouts.group_plan(rollout)
    wave = rollouts.wave_of(rollout, plan)
    previous_percent = rollout.waves[rollout.current_wave - 1] if rollout.current_wave else 0
    before = math.ceil(len(plan.chosen) * previous_percent / 100)
    since = rollout.started_at or rollout.created_at
    psi_on = rollout.gate("max_confidence_psi") is not None
    variants: dict[str, VariantEvidence] = {}
    for bundle_id, ids in _by_variant(wave).items():
        previous = {rollout.previous.get(d) for d in ids} - {None}
        variants[bundle_id] = VariantEvidence(
            devices=ids,
            outcomes=evidence.install_outcomes(bundle_id, ids, since),
            new=evidence.collect(bundle_id, ids, since),
            baseline=evidence.collect(previous.pop(), ids, since - BASELINE_WINDOW)
            if len(previous) == 1
            else None,
            drift_reference=drift.reference_for_bundle(bundle_id) if psi_on else None,
        )
    return WaveEvidence(
        wave_devices=len(wave),
        new_devices=len(wave) - before,
        elapsed_seconds=(now - (rollout.wave_started_at or since)).total_seconds(),
        variants=variants,
    )


def _by_variant(wave: list[tuple[Device, Bundle]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for device, bundle in wave:
        grouped.setdefault(bundle.pk, []).append(str(device.pk))
    return grouped


# --- deciding (pure) ------------------------------------------------------------------


def decide(wave: WaveEvidence, gate: Gate, soak_seconds: int) -> Decision:
    """The verdict on a wave from its evidence alone (no database, no clock)."""
    results = gate_results(wave, gate)
    if any(r.status == "fail" for r in results):
        failing = ", ".join(
            f"{r.name}={r.value} (limit {r.limit})" for r in results if r.status == "fail"
        )
        return Decision("fail", results, [], f"gate failed: {failing}")
    waiting = [f"{r.name}: {r.needs}" for r in results if r.status == "wait"]
    # A wave that adds no device (e.g. 10% and 50% of a one-device group) has nothing new
    # to soak: its devices already soaked in an earlier wave.
    soak = soak_seconds if wave.new_devices > 0 else 0
    left = soak - wave.elapsed_seconds
    timeout = float(gate("evidence_timeout_seconds"))
    if waiting and wave.elapsed_seconds >= timeout:
        reason = f"no evidence within {timeout:.0f} s: " + "; ".join(waiting)
        return Decision("pause", results, waiting, reason)
    if left > 0:
        waiting.append(f"soak: {math.ceil(left)} s of {soak} s left")
    if waiting:
        return Decision("wait", results, waiting)
    return Decision("pass", results, [])


def gate_results(wave: WaveEvidence, gate: Gate) -> list[GateResult]:
    parts = wave.variants
    named = len(parts) > 1
    # At least one device must report, whatever the setting: an empty wave proves nothing.
    need = max(1, min(int(gate("min_devices_reporting")), wave.wave_devices))
    outcomes = {d: o for v in parts.values() for d, o in v.outcomes.items()}
    new = evidence.BundleEvidence()
    for part in parts.values():
        new.merge(part.new)
    results = [
        _install_failure_rate(parts, outcomes, need, wave.wave_devices, gate),
        _devices_reporting(outcomes, new, need, gate),
        _golden_agreement(new, need, gate),
        _error_rate(new, need, gate),
    ]
    for bundle_id, part in parts.items():
        where = f"{bundle_id}: " if named else ""
        results += _comparisons(part, gate, where)
        results += _confidence_drift(part, gate, where)
    return results


def _status(ok: bool | None) -> str:
    return "wait" if ok is None else ("pass" if ok else "fail")


def _result(
    name: str,
    value: float | None,
    limit: float | None,
    ok: bool | None,
    detail: str = "",
    needs: str = "",
) -> GateResult:
    rounded = None if value is None else round(value, 6)
    return GateResult(name, _status(ok), rounded, limit, detail, needs if ok is None else "")


def _install_failure_rate(
    parts: Mapping[str, VariantEvidence],
    outcomes: dict[str, str],
    need: int,
    wave_devices: int,
    gate: Gate,
) -> GateResult:
    limit = gate("max_install_failure_rate")
    failed = sum(1 for o in outcomes.values() if o == "failed")
    # Judged on the worst variant: a variant serving a few devices must not fail on all
    # of them while the many devices of another variant dilute the rate.
    worst, note = _worst_failure_rate({b: p.outcomes for b, p in parts.items()})
    ok: bool | None = None
    if worst is not None and worst > limit:
        ok = False  # failures are evidence enough, however few devices reported
    elif len(outcomes) >= need:
        ok = True
    detail = (
        f"{failed} failed, {len(outcomes) - failed} installed of {wave_devices} in the wave{note}"
    )
    needs = f"install outcomes from {need - len(outcomes)} more device(s)"
    return _result("install_failure_rate", worst, limit, ok, detail, needs)


def _devices_reporting(
    outcomes: dict[str, str], new: evidence.BundleEvidence, need: int, gate: Gate
) -> GateResult:
    installed = {d for d, o in outcomes.items() if o == "installed"}
    count = len(new.devices_reporting | installed)
    ok = True if len(installed) >= need else None
    needs = f"{need - len(installed)} more device(s) running the bundle"
    return _result(
        "devices_reporting",
        float(count),
        gate("min_devices_reporting"),
        ok,
        f"{len(installed)} installed",
        needs,
    )


def _golden_agreement(new: evidence.BundleEvidence, need: int, gate: Gate) -> GateResult:
    limit = gate("min_golden_agreement")
    if limit is None:
        return GateResult("golden_agreement", "n/a", None, None, "off")
    value, tested = new.golden_agreement, len(new.golden)
    ok: bool | None = None
    if value is not None and value < limit:
        ok = False
    elif tested >= need:
        ok = True
    detail = f"lowest device self-test agreement, {tested} device(s) tested"
    needs = f"golden self-test results from {need - tested} more device(s)"
    return _result("golden_agreement", value, limit, ok, detail, needs)


def _error_rate(new: evidence.BundleEvidence, need: int, gate: Gate) -> GateResult:
    limit = gate("max_error_rate")
    if limit is None:
        return GateResult("error_rate", "n/a", None, None, "off")
    minimum = int(gate("min_requests"))
    reporting = len(new.devices_reporting)
    rate = new.error_rate
    ok: bool | None = None
    if rate is not None and new.requests >= max(minimum, 1) and rate > limit:
        ok = False
    elif reporting >= need and new.requests >= minimum:
        ok = rate is None or rate <= limit
    detail = f"{new.errors} errors in {new.requests} requests from {reporting} device(s)"
    if minimum == 0 and not new.requests:
        detail += " (no traffic yet; min_requests 0 accepts the self-test alone)"
    missing = []
    if reporting < need:
        missing.append(f"telemetry from {need - reporting} more device(s)")
    if new.requests < minimum:
        missing.append(f"{minimum - new.requests} more requests")
    return _result("error_rate", rate, limit, ok, detail, " and ".join(missing))


def _comparisons(part: VariantEvidence, gate: Gate, where: str) -> list[GateResult]:
    """Latency and feedback accuracy against what the same devices ran before. They apply
    only when the previous bundle has enough evidence to compare with; then the new one
    must gather as much before the gate can pass."""
    old, new = part.baseline, part.new
    if old is None:
        return []
    results = []
    samples = int(gate("min_latency_samples"))
    limit = gate("max_p95_latency_ratio")
    if limit is not None and sum(old.latency_counts) >= samples:
        have = sum(new.latency_counts)
        p95_new, p95_old = new.percentile(95), old.percentile(95)
        if have >= samples and p95_new is not None and p95_old:
            ratio = p95_new / p95_old
            detail = f"{where}p95 {p95_new:.2f} ms vs {p95_old:.2f} ms before"
            results.append(_result("p95_latency_ratio", ratio, limit, ratio <= limit, detail))
        else:
            needs = f"{where}{samples - have} more latency samples (baseline has {samples}+)"
            results.append(_result("p95_latency_ratio", None, limit, None, "", needs))
    minimum = int(gate("min_feedback_samples"))
    margin = gate("max_accuracy_drop_points")
    if margin is not None and old.feedback_total >= minimum:
        if new.feedback_total >= minimum:
            worse, p_value = evidence.accuracy_drop_is_significant(
                new.feedback_correct,
                new.feedback_total,
                old.feedback_correct,
                old.feedback_total,
                margin,
            )
            drop = 100 * ((old.accuracy or 0) - (new.accuracy or 0))
            detail = f"{where}one-sided test p={p_value:.3g}"
            results.append(_result("accuracy_drop_points", drop, margin, not worse, detail))
        else:
            needs = f"{where}{minimum - new.feedback_total} more feedback samples"
            results.append(_result("accuracy_drop_points", None, margin, None, "", needs))
    return results


def _confidence_drift(part: VariantEvidence, gate: Gate, where: str) -> list[GateResult]:
    """Optional: PSI of a variant's in-field confidences against its compression-time
    reference."""
    limit = gate("max_confidence_psi")
    reference = part.drift_reference
    if limit is None or reference is None:
        return []
    if reference.counts is None:
        # Embedding models report no confidence; old versions have no reference. Neither
        # should block a rollout the operator cannot fix from here.
        return [GateResult("confidence_psi", "n/a", None, limit, where + reference.note)]
    new = part.new
    samples, minimum = new.confidence_samples, int(gate("min_confidence_samples"))
    value = reference.psi(new.confidence_counts) if samples else None
    ok = None if value is None or samples < minimum else value <= limit
    detail = f"{where}{samples} in-field confidences (at least {minimum} needed)"
    needs = f"{where}{minimum - samples} more in-field confidences"
    return [_result("confidence_psi", value, limit, ok, detail, needs)]


def _worst_failure_rate(variant_outcomes: dict[str, dict[str, str]]) -> tuple[float | None, str]:
    """(highest failed / reported over the variants, a note naming it if several)."""
    rates = {
        bundle_id: (sum(1 for o in found.values() if o == "failed"), len(found))
        for bundle_id, found in variant_outcomes.items()
        if found
    }
    if not rates:
        return None, ""
    bundle_id, (failed, total) = max(rates.items(), key=lambda item: item[1][0] / item[1][1])
    note = (
        f"; worst variant {bundle_id}: {failed} of {total} failed"
        if len(variant_outcomes) > 1
        else ""
    )
    return failed / total, note


# --- acting ---------------------------------------------------------------------------


def evaluate(rollout: Rollout) -> tuple[str, list[GateResult]]:
    """("pass" | "wait" | "pause" | "fail", per-gate results) for the current wave."""
    decision = assess(rollout)
    return decision.outcome, decision.results


def assess(rollout: Rollout) -> Decision:
    return decide(gather(rollout), rollout.gate, rollout.soak_seconds)


def step(rollout: Rollout) -> str:
    """Evaluate one running rollout and act: promote, wait, pause or roll back."""
    with transaction.atomic():
        rollout = Rollout.objects.select_for_update().get(pk=rollout.pk)
        if rollout.status != RolloutStatus.RUNNING:
            return str(rollout.status)
        rollouts.apply_wave(rollout)  # devices that joined the group mid-rollout
        verdict = assess(rollout)
        # The gates' numbers, and what the wave waits for, on the page and in the API.
        numbers = {"wave": rollout.current_wave, "gates": [asdict(r) for r in verdict.results]}
        rollouts.record_evaluation(
            rollout, {**numbers, "decision": verdict.outcome, "waiting_for": verdict.waiting_for}
        )
        if verdict.outcome == "pass":
            rollouts.advance(rollout, None, "every gate passed on evidence after soak", numbers)
        elif verdict.outcome == "pause":
            rollouts.pause_running(rollout, verdict.reason, numbers)
        elif verdict.outcome == "fail":
            if rollout.gate("on_failure") == "pause":
                rollouts.pause_running(rollout, verdict.reason, numbers)
            else:
                rollouts.roll_back_running(rollout, verdict.reason, numbers)
    return verdict.outcome


def step_all() -> dict[int, str]:
    """Evaluate every running rollout; one crashing never stalls the others."""
    outcome: dict[int, str] = {}
    for rollout in Rollout.objects.filter(status=RolloutStatus.RUNNING):
        try:
            outcome[rollout.pk] = step(rollout)
        except Exception:
            log.exception("evaluating rollout %s failed", rollout.pk)
            outcome[rollout.pk] = "error"
    return outcome
