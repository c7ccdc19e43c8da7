"""Rollout gates: decide from in-field evidence whether a wave passes, waits or fails."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.models import Bundle, Device, Rollout, RolloutStatus
from fleet.rollouts import engine as rollouts
from fleet.telemetry import drift, evidence

log = logging.getLogger(__name__)
# How far back the previous bundle's numbers on the same devices are taken from.
BASELINE_WINDOW = timedelta(days=7)


@dataclass
class GateResult:
    name: str
    status: str  # pass | fail | wait
    value: float | None
    limit: float | None
    detail: str = ""


def _gate(
    name: str, value: float | None, limit: float, ok: bool | None, detail: str = ""
) -> GateResult:
    status = "wait" if ok is None else ("pass" if ok else "fail")
    return GateResult(name, status, None if value is None else round(value, 6), limit, detail)


def evaluate(rollout: Rollout) -> tuple[str, list[GateResult]]:
    """("pass" | "wait" | "fail", per-gate results) for the rollout's current wave."""
    wave = rollouts.wave_plan(rollout)
    devices = [str(d.pk) for d, _ in wave]
    since = rollout.started_at or rollout.created_at
    g = rollout.gate
    # Each device is judged on its own variant: outcomes and evidence are gathered per
    # variant over the devices that variant serves, then merged.
    by_variant = _by_variant(wave)
    outcomes: dict[str, str] = {}
    per_variant: dict[str, evidence.BundleEvidence] = {}
    variant_outcomes: dict[str, dict[str, str]] = {}
    for bundle_id, ids in by_variant.items():
        variant_outcomes[bundle_id] = evidence.install_outcomes(bundle_id, ids, since)
        outcomes.update(variant_outcomes[bundle_id])
        per_variant[bundle_id] = evidence.collect(bundle_id, ids, since)
    failed = sum(1 for o in outcomes.values() if o == "failed")
    installed = len(outcomes) - failed
    new = _merged(per_variant.values())
    # Judged on the worst variant: a variant serving a few devices must not fail on all
    # of them while the many devices of another variant dilute the rate.
    worst, worst_detail = _worst_failure_rate(variant_outcomes)
    results = [
        _gate(
            "install_failure_rate",
            worst,
            g("max_install_failure_rate"),
            None if worst is None else worst <= g("max_install_failure_rate"),
            f"{failed} failed, {installed} installed of {len(devices)} in the wave{worst_detail}",
        ),
        _gate(
            "devices_reporting",
            float(
                len(new.devices_reporting | {d for d, o in outcomes.items() if o == "installed"})
            ),
            g("min_devices_reporting"),
            None if installed < min(g("min_devices_reporting"), len(devices)) else True,
        ),
        _gate(
            "golden_agreement",
            new.golden_agreement,
            g("min_golden_agreement"),
            None
            if new.golden_agreement is None
            else new.golden_agreement >= g("min_golden_agreement"),
            "lowest device self-test agreement",
        ),
        _gate(
            "error_rate",
            new.error_rate,
            g("max_error_rate"),
            None if new.error_rate is None else new.error_rate <= g("max_error_rate"),
        ),
        *[
            result
            for bundle_id, ids in by_variant.items()
            for result in _comparisons(
                rollout,
                ids,
                since,
                per_variant[bundle_id],
                bundle_id if len(by_variant) > 1 else "",
            )
        ],
        # Each variant against its own compression-time reference.
        *[
            result
            for bundle_id in by_variant
            for result in _confidence_drift(
                rollout, bundle_id, per_variant[bundle_id], len(by_variant) > 1
            )
        ],
    ]
    if any(r.status == "fail" for r in results):
        return "fail", results
    soaked = (
        timezone.now() - (rollout.wave_started_at or since)
    ).total_seconds() >= rollout.soak_seconds
    required = {"install_failure_rate", "devices_reporting"}
    if soaked and all(r.status == "pass" for r in results if r.name in required):
        return "pass", results
    return "wait", results


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


def _by_variant(wave: list[tuple[Device, Bundle]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for device, bundle in wave:
        grouped.setdefault(bundle.pk, []).append(str(device.pk))
    return grouped


def _merged(parts: Any) -> evidence.BundleEvidence:
    """One evidence from per-variant evidence over disjoint devices."""
    total = evidence.BundleEvidence()
    for part in parts:
        total.merge(part)
    return total


def _comparisons(
    rollout: Rollout,
    devices: list[str],
    since: Any,
    new: evidence.BundleEvidence,
    variant: str = "",
) -> list[GateResult]:
    """Latency and feedback accuracy against what the same devices ran before (with
    variants: per variant, over the devices it serves)."""
    where = f"{variant}: " if variant else ""
    g = rollout.gate
    before = {rollout.previous.get(d) for d in devices} - {None}
    if len(before) != 1:
        return []  # nothing (or a mix) to compare against: these gates do not apply
    old = evidence.collect(before.pop(), devices, since - BASELINE_WINDOW)
    results = []
    p95_new, p95_old = new.percentile(95), old.percentile(95)
    if p95_new is not None and p95_old:
        ratio = p95_new / p95_old
        results.append(
            _gate(
                "p95_latency_ratio",
                ratio,
                g("max_p95_latency_ratio"),
                ratio <= g("max_p95_latency_ratio"),
                f"{where}p95 {p95_new:.2f} ms vs {p95_old:.2f} ms before",
            )
        )
    minimum = g("min_feedback_samples")
    if new.feedback_total >= minimum and old.feedback_total >= minimum:
        worse, p_value = evidence.accuracy_drop_is_significant(
            new.feedback_correct,
            new.feedback_total,
            old.feedback_correct,
            old.feedback_total,
            g("max_accuracy_drop_points"),
        )
        drop = 100 * ((old.accuracy or 0) - (new.accuracy or 0))
        results.append(
            _gate(
                "accuracy_drop_points",
                drop,
                g("max_accuracy_drop_points"),
                not worse,
                f"{where}one-sided test p={p_value:.3g}",
            )
        )
    return results


def _confidence_drift(
    rollout: Rollout, bundle_id: str, new: evidence.BundleEvidence, name_variant: bool
) -> list[GateResult]:
    """Optional: PSI of a variant's in-field confidences against its compression-time
    reference."""
    limit = rollout.gate("max_confidence_psi")
    if limit is None:
        return []
    where = f"{bundle_id}: " if name_variant else ""
    reference = drift.reference_for_bundle(bundle_id)
    if reference.counts is None:
        # Embedding models report no confidence; old versions have no reference. Neither
        # should block a rollout the operator cannot fix from here.
        return [GateResult("confidence_psi", "n/a", None, limit, where + reference.note)]
    samples, minimum = new.confidence_samples, rollout.gate("min_confidence_samples")
    value = reference.psi(new.confidence_counts) if samples else None
    ok = None if value is None or samples < minimum else value <= limit
    detail = f"{where}{samples} in-field confidences (at least {minimum} needed)"
    return [_gate("confidence_psi", value, limit, ok, detail)]


def step(rollout: Rollout) -> str:
    """Evaluate one running rollout and act: promote, wait, pause or roll back."""
    with transaction.atomic():
        rollout = Rollout.objects.select_for_update().get(pk=rollout.pk)
        if rollout.status != RolloutStatus.RUNNING:
            return rollout.status
        rollouts.apply_wave(rollout)  # devices that joined the group mid-rollout
        decision, results = evaluate(rollout)
        numbers = {"wave": rollout.current_wave, "gates": [asdict(r) for r in results]}
        Rollout.objects.filter(pk=rollout.pk).update(
            last_evaluation={**numbers, "decision": decision, "at": timezone.now().isoformat()}
        )
        if decision == "pass":
            rollouts.advance(rollout, None, "gates passed after soak", numbers)
        elif decision == "fail":
            failing = ", ".join(
                f"{r.name}={r.value} (limit {r.limit})" for r in results if r.status == "fail"
            )
            reason = f"gate failed: {failing}"
            if rollout.gate("on_failure") == "pause":
                rollout.status, rollout.reason = RolloutStatus.PAUSED, reason
                rollout.save(update_fields=["status", "reason"])
                rollouts.record(rollout, None, "pause", reason, numbers)
            else:
                rollouts.restore_previous(rollout)
                rollout.status, rollout.reason = RolloutStatus.ROLLED_BACK, reason
                rollout.finished_at = timezone.now()
                rollout.save(update_fields=["status", "reason", "finished_at"])
                rollouts.record(rollout, None, "rollback", reason, numbers)
    return decision


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
