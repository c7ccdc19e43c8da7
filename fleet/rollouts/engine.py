"""The rollout engine: waves over a group, gates on in-field evidence, and the operator
actions (start, pause, resume, promote, rollback, cancel). Every transition is written to
the rollout's event list and the audit log, with who, why and the numbers."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from django.db import transaction
from django.utils import timezone

from accounts.models import audit
from fleet.models import Bundle, Device, Group, Rollout, RolloutEvent, RolloutStatus, RolloutVariant
from fleet.models.rollouts import ACTIVE_ROLLOUT_STATUSES, DEFAULT_GATES, DEFAULT_SOAK_SECONDS
from fleet.rollouts import rollout_plan
from fleet.rollouts.variants import VariantError
from fleet.security import director

GATE_NAMES = set(DEFAULT_GATES)


class RolloutError(Exception):
    status = 400


class RolloutConflictError(RolloutError):
    status = 409


def check_plan(waves: Any, gates: Any, soak_seconds: Any) -> tuple[list[int], dict[str, Any]]:
    """Raises RolloutError unless waves are increasing percents ending at 100."""
    if not isinstance(waves, list) or not waves or len(waves) > 10:
        raise RolloutError("waves must be a list of 1-10 percents, e.g. [1, 10, 50, 100]")
    if any(not isinstance(w, int) or not 0 < w <= 100 for w in waves):
        raise RolloutError("each wave is a whole percent between 1 and 100")
    if waves != sorted(set(waves)) or waves[-1] != 100:
        raise RolloutError("waves must increase and end at 100")
    if not isinstance(gates, dict) or set(gates) - GATE_NAMES:
        raise RolloutError(
            f"unknown gates: {sorted(set(gates) - GATE_NAMES)}; known: {sorted(GATE_NAMES)}"
        )
    if gates.get("on_failure", "rollback") not in ("rollback", "pause"):
        raise RolloutError("on_failure must be 'rollback' or 'pause'")
    psi = gates.get("max_confidence_psi")
    if psi is not None and (isinstance(psi, bool) or not isinstance(psi, (int, float)) or psi <= 0):
        raise RolloutError("max_confidence_psi must be a positive number (e.g. 0.25) or null")
    for name in ("min_requests", "min_latency_samples", "min_feedback_samples"):
        value = gates.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RolloutError(f"{name} must be a whole number >= 0")
    timeout = gates.get("evidence_timeout_seconds", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 60 <= timeout <= 7 * 86400:
        raise RolloutError("evidence_timeout_seconds must be between 60 and 604800")
    if not isinstance(soak_seconds, int) or not 0 <= soak_seconds <= 30 * 86400:
        raise RolloutError("soak_seconds must be between 0 and 2592000")
    return waves, gates


def record(
    rollout: Rollout,
    actor: Any,
    action: str,
    reason: str = "",
    numbers: dict[str, Any] | None = None,
) -> None:
    """Write one transition to the rollout's event list and the audit log."""
    name = actor.get_username() if getattr(actor, "is_authenticated", False) else "tinyfleet"
    RolloutEvent.objects.create(
        rollout=rollout, actor=name, action=action, reason=reason, numbers=numbers or {}
    )
    audit(actor, f"rollout.{action}", rollout, reason=reason, **(numbers or {}))


def create(
    *,
    user: Any,
    bundle: Bundle,
    group: Group,
    waves: list[int],
    gates: dict[str, Any],
    soak_seconds: int = DEFAULT_SOAK_SECONDS,
    start: bool = True,
    variants: list[Bundle] | None = None,
) -> Rollout:
    """Create (and by default start) a rollout of `bundle` and, optionally, further
    `variants` of the same model (each device gets the first one it can run).

    Raises:
        RolloutError: bad plan, an unpublished bundle or variants that cannot form one
            release; RolloutConflictError: the group already has an active rollout.
    """
    check_plan(waves, gates, soak_seconds)
    bundles = [bundle, *(variants or [])]
    try:
        rollout_plan.check_variants(bundles)
    except VariantError as exc:
        raise RolloutError(str(exc)) from exc
    with transaction.atomic():
        Group.objects.select_for_update().get(pk=group.pk)
        active = Rollout.objects.filter(group=group, status__in=ACTIVE_ROLLOUT_STATUSES).first()
        if active is not None:
            raise RolloutConflictError(
                f"group {group.name!r} already has an active rollout ({active.pk}); "
                "finish, cancel or roll it back first"
            )
        rollout = Rollout.objects.create(
            bundle=bundle,
            group=group,
            waves=waves,
            gates=gates,
            soak_seconds=soak_seconds,
            created_by=user,
        )
        RolloutVariant.objects.bulk_create(
            RolloutVariant(rollout=rollout, bundle=b, position=i) for i, b in enumerate(bundles)
        )
        record(
            rollout, user, "create", numbers={"waves": waves, "variants": [b.pk for b in bundles]}
        )
        if start:
            _start(rollout, user)
    return rollout


def _start(rollout: Rollout, user: Any) -> None:
    now = timezone.now()
    rollout.status, rollout.current_wave = RolloutStatus.RUNNING, 0
    rollout.started_at = rollout.wave_started_at = now
    rollout.save(update_fields=["status", "current_wave", "started_at", "wave_started_at"])
    record(rollout, user, "start", numbers={"wave": 0, "percent": rollout.wave_percent})
    apply_wave(rollout)
    _pause_if_nothing_fits(rollout)


def _order(rollout: Rollout, device: Device) -> str:
    # A stable, rollout-specific shuffle: waves are a random sample, and a device's place
    # never changes, so devices joining mid-rollout slot in without reshuffling others.
    return hashlib.sha256(f"{rollout.pk}:{device.pk}".encode()).hexdigest()


def group_plan(rollout: Rollout) -> rollout_plan.Plan:
    """Every active member of the group in wave order, with its variant or the reason
    none fits."""
    members = sorted(
        rollout.group.members().filter(revoked_at__isnull=True), key=lambda d: _order(rollout, d)
    )
    return rollout_plan.plan(members, rollout_plan.variant_bundles(rollout))


def wave_plan(rollout: Rollout) -> list[tuple[Device, Bundle]]:
    """The devices the current wave covers, each with its variant. Devices no variant
    fits are left out of the count: a wave's percent is of the devices that can take
    part, so they neither dilute the gates nor hold back promotion."""
    return wave_of(rollout, group_plan(rollout))


def wave_of(rollout: Rollout, plan: rollout_plan.Plan) -> list[tuple[Device, Bundle]]:
    return plan.chosen[: math.ceil(len(plan.chosen) * rollout.wave_percent / 100)]


def wave_devices(rollout: Rollout) -> list[Device]:
    """The group's active members (that some variant fits) the current wave covers."""
    return [device for device, _ in wave_plan(rollout)]


def apply_wave(rollout: Rollout) -> int:
    """Assign each device the wave covers its variant (idempotent); returns how many
    devices got a new assignment."""
    changed = 0
    previous = dict(rollout.previous)
    for device, bundle in wave_plan(rollout):
        changed += _assign(device, bundle, previous)
    if previous != rollout.previous:
        Rollout.objects.filter(pk=rollout.pk).update(previous=previous)
        rollout.previous = previous
    return changed


def _assign(device: Device, bundle: Bundle, previous: dict[str, Any]) -> bool:
    """The one place a rollout writes a device's assignment (remembering, once, what it
    ran before, for rollback); False when the device already has `bundle`."""
    current = director.current_assignment(device)
    if current is not None and current.bundle_id == bundle.pk:
        return False
    previous.setdefault(str(device.pk), current.bundle_id if current else None)
    director.assign(device, bundle)
    return True


def _pause_if_nothing_fits(rollout: Rollout) -> None:
    """A running rollout over a non-empty group that no variant fits cannot make
    progress: pause it and say why, rather than wait forever."""
    if rollout.status != RolloutStatus.RUNNING:
        return
    plan = group_plan(rollout)
    if plan.chosen or not plan.incompatible:
        return
    first = plan.incompatible[0]
    reason = (
        f"no device of group {rollout.group.name!r} can run any variant "
        f"({len(plan.incompatible)} with no compatible variant, e.g. {first[0].name}: {first[1]})"
    )
    rollout.status, rollout.reason = RolloutStatus.PAUSED, reason
    rollout.save(update_fields=["status", "reason"])
    record(rollout, None, "pause", reason, {"no_compatible_variant": len(plan.incompatible)})


def _locked(rollout_id: int) -> Rollout:
    return Rollout.objects.select_for_update().select_related("bundle", "group").get(pk=rollout_id)


def pause(rollout: Rollout, user: Any, reason: str = "") -> Rollout:
    with transaction.atomic():
        rollout = _locked(rollout.pk)
        if rollout.status != RolloutStatus.RUNNING:
            raise RolloutConflictError(f"rollout is {rollout.status}, not running")
        rollout.status, rollout.reason = RolloutStatus.PAUSED, reason
        rollout.save(update_fields=["status", "reason"])
        record(rollout, user, "pause", reason)
    return rollout


def resume(rollout: Rollout, user: Any) -> Rollout:
    with transaction.atomic():
        rollout = _locked(rollout.pk)
        if rollout.status == RolloutStatus.DRAFT:
            _start(rollout, user)  # a rollout created with start=false begins here
            return rollout
        if rollout.status != RolloutStatus.PAUSED:
            raise RolloutConflictError(f"rollout is {rollout.status}, not paused")
        rollout.status, rollout.wave_started_at = RolloutStatus.RUNNING, timezone.now()
        rollout.reason = ""
        rollout.save(update_fields=["status", "wave_started_at", "reason"])
        record(rollout, user, "resume")
        apply_wave(rollout)
        _pause_if_nothing_fits(rollout)
    return rollout


def promote(rollout: Rollout, user: Any, reason: str = "promoted by hand") -> Rollout:
    """Move to the next wave now (or finish after the last)."""
    with transaction.atomic():
        rollout = _locked(rollout.pk)
        if rollout.status not in ACTIVE_ROLLOUT_STATUSES:
            raise RolloutConflictError(f"rollout is {rollout.status}; it cannot be promoted")
        advance(rollout, user, reason)
    return rollout


def record_evaluation(rollout: Rollout, evaluation: dict[str, Any]) -> None:
    """Keep the gates' latest verdict (numbers, decision, what the wave waits for)."""
    evaluation = {**evaluation, "at": timezone.now().isoformat()}
    Rollout.objects.filter(pk=rollout.pk).update(last_evaluation=evaluation)
    rollout.last_evaluation = evaluation


def waiting_for(rollout: Rollout) -> list[str]:
    """What a running rollout's current wave still waits for (its last evaluation)."""
    if rollout.status != RolloutStatus.RUNNING:
        return []
    evaluation = rollout.last_evaluation or {}
    if evaluation.get("wave") != rollout.current_wave:
        return ["the first gate evaluation of this wave"]
    return [str(item) for item in evaluation.get("waiting_for", [])]


def pause_running(rollout: Rollout, reason: str, numbers: dict[str, Any] | None = None) -> None:
    """The engine pauses a running rollout it holds locked (gates failed or evidence
    never came); an operator resumes it."""
    rollout.status, rollout.reason = RolloutStatus.PAUSED, reason
    rollout.save(update_fields=["status", "reason"])
    record(rollout, None, "pause", reason, numbers)


def roll_back_running(rollout: Rollout, reason: str, numbers: dict[str, Any] | None = None) -> None:
    """The engine rolls back a running rollout it holds locked (a gate failed)."""
    restore_previous(rollout)
    rollout.status, rollout.reason = RolloutStatus.ROLLED_BACK, reason
    rollout.finished_at = timezone.now()
    rollout.save(update_fields=["status", "reason", "finished_at"])
    record(rollout, None, "rollback", reason, numbers)


def advance(
    rollout: Rollout, actor: Any, reason: str, numbers: dict[str, Any] | None = None
) -> None:
    """Move a locked rollout to its next wave, or finish it after the last."""
    if rollout.current_wave + 1 >= len(rollout.waves):
        rollout.status, rollout.finished_at = RolloutStatus.SUCCEEDED, timezone.now()
        rollout.save(update_fields=["status", "finished_at"])
        record(rollout, actor, "succeed", reason, numbers)
        return
    rollout.current_wave += 1
    rollout.status, rollout.wave_started_at = RolloutStatus.RUNNING, timezone.now()
    rollout.save(update_fields=["current_wave", "status", "wave_started_at"])
    record(
        rollout,
        actor,
        "promote",
        reason,
        {**(numbers or {}), "wave": rollout.current_wave, "percent": rollout.wave_percent},
    )
    apply_wave(rollout)


def rollback(
    rollout: Rollout,
    user: Any,
    reason: str = "rolled back by hand",
    numbers: dict[str, Any] | None = None,
) -> Rollout:
    """Put every device this rollout touched back on what it ran before."""
    with transaction.atomic():
        rollout = _locked(rollout.pk)
        if rollout.status not in ACTIVE_ROLLOUT_STATUSES:
            raise RolloutConflictError(f"rollout is {rollout.status}; it cannot be rolled back")
        restore_previous(rollout)
        rollout.status, rollout.reason = RolloutStatus.ROLLED_BACK, reason
        rollout.finished_at = timezone.now()
        rollout.save(update_fields=["status", "reason", "finished_at"])
        record(rollout, user, "rollback", reason, numbers)
    return rollout


def restore_previous(rollout: Rollout) -> None:
    """Reassign what each touched device ran before, unless something newer took over."""
    ours = {b.pk for b in rollout_plan.variant_bundles(rollout)}
    for device_id, bundle_id in rollout.previous.items():
        device = Device.objects.filter(pk=device_id, revoked_at__isnull=True).first()
        if device is None:
            continue
        current = director.current_assignment(device)
        if current is None or current.bundle_id not in ours:
            continue  # something newer took over this device; leave it alone
        if bundle_id is None:
            director.unassign(device)
        else:
            director.assign(device, Bundle.objects.get(pk=bundle_id))


def cancel(rollout: Rollout, user: Any) -> Rollout:
    """Stop where it is: devices keep what they have; no further waves."""
    with transaction.atomic():
        rollout = _locked(rollout.pk)
        if rollout.status not in (*ACTIVE_ROLLOUT_STATUSES, RolloutStatus.DRAFT):
            raise RolloutConflictError(f"rollout is {rollout.status}; it cannot be cancelled")
        rollout.status, rollout.finished_at = RolloutStatus.CANCELLED, timezone.now()
        rollout.save(update_fields=["status", "finished_at"])
        record(rollout, user, "cancel")
    return rollout
