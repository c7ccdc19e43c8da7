"""Variants of a rollout, per device: which bundle each member of the group gets, which
members no variant fits (and why), the preview shown before starting and the
per-variant progress shown while running. The decisions are `fleet.rollouts.variants`; this
module only feeds them the bundles' signed records and the devices' reported facts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet.models import Bundle, Device, Group, Rollout
from fleet.models.rollouts import ACTIVE_ROLLOUT_STATUSES
from fleet.rollouts.variants import NO_COMPATIBLE_VARIANT, VariantError, check_release, choose
from fleet.telemetry import evidence


@dataclass
class Plan:
    """Devices split by what they get, each list in the order given."""

    chosen: list[tuple[Device, Bundle]] = field(default_factory=list)
    incompatible: list[tuple[Device, str]] = field(default_factory=list)


def variant_bundles(rollout: Rollout) -> list[Bundle]:
    """The rollout's bundles in the operator's order of preference."""
    rows = list(rollout.variants.select_related("bundle").order_by("position"))
    # Rollouts created before variants existed have no rows: their one bundle.
    return [row.bundle for row in rows] or [rollout.bundle]


def check_variants(bundles: Sequence[Bundle]) -> None:
    """Raises VariantError unless every bundle is published and they form one release."""
    for bundle in bundles:
        if not bundle.is_published or bundle.record is None:
            raise VariantError(f"bundle {bundle.pk} is not published")
    check_release([(b.pk, b.record or {}) for b in bundles])


def plan(devices: Iterable[Device], bundles: Sequence[Bundle]) -> Plan:
    by_id = {b.pk: b for b in bundles}
    variants = [(b.pk, b.record or {}) for b in bundles]
    result = Plan()
    for device in devices:
        choice = choose(device.facts or {}, variants)
        if choice.bundle_id is None:
            result.incompatible.append((device, choice.reason))
        else:
            result.chosen.append((device, by_id[choice.bundle_id]))
    return result


def preview(group: Group, bundles: Sequence[Bundle]) -> dict[str, Any]:
    """How many of the group's active devices each variant would serve, before starting."""
    result = plan(group.members().filter(revoked_at__isnull=True), bundles)
    served = {b.pk: 0 for b in bundles}
    for _, bundle in result.chosen:
        served[bundle.pk] += 1
    return {
        "group": group.pk,
        "devices": len(result.chosen) + len(result.incompatible),
        "variants": [
            {"bundle": b.pk, "runtime": (b.record or {}).get("runtime"), "devices": served[b.pk]}
            for b in bundles
        ],
        "no_compatible_variant": len(result.incompatible),
        "incompatible": [
            {"device": str(d.pk), "name": d.name, "reason": r} for d, r in result.incompatible[:100]
        ],
    }


def variant_progress(
    bundles: Sequence[Bundle], wave: Sequence[tuple[Device, Bundle]], since: datetime
) -> list[dict[str, Any]]:
    """Per variant: devices of the current wave it serves, installed, failed."""
    rows = []
    for bundle in bundles:
        devices = [str(d.pk) for d, b in wave if b.pk == bundle.pk]
        outcomes = evidence.install_outcomes(bundle.pk, devices, since) if devices else {}
        failed = sum(1 for o in outcomes.values() if o == "failed")
        rows.append(
            {
                "bundle": bundle.pk,
                "runtime": (bundle.record or {}).get("runtime"),
                "devices": len(devices),
                "installed": len(outcomes) - failed,
                "failed": failed,
            }
        )
    return rows


def device_variants(device: Device) -> list[dict[str, Any]]:
    """For each active rollout over a group this device is in: the variant it gets, or
    "no compatible variant" with the reason."""
    found = []
    for rollout in Rollout.objects.filter(status__in=ACTIVE_ROLLOUT_STATUSES).select_related(
        "group", "bundle"
    ):
        if not rollout.group.matches(device):
            continue
        choice = choose(
            device.facts or {}, [(b.pk, b.record or {}) for b in variant_bundles(rollout)]
        )
        found.append(
            {
                "rollout": rollout.pk,
                "group": rollout.group.name,
                "bundle": choice.bundle_id,
                "status": "compatible" if choice.bundle_id else NO_COMPATIBLE_VARIANT,
                "reason": choice.reason,
            }
        )
    return found
