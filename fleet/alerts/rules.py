"""What is wrong now, per rule: each finding is one alert's worth (kind + key).

Findings are recomputed from the database on every evaluation; the engine opens an
alert for a new finding and resolves an open one whose finding is gone. Everything
here reads indexed columns over bounded windows, never the whole telemetry table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from fleet.alerts.models import Rule, RuleKind
from fleet.models import Device, DeviceEvent, Rollout, RolloutStatus
from fleet.telemetry import health, monitoring

# A rolled-back rollout or a failed self-test stays alerting this long, then resolves.
RECENT = timedelta(hours=24)
SELFTEST_WINDOW = timedelta(hours=1)
# Health gauges and dropped counts are read from batches this recent.
HEALTH_WINDOW = timedelta(minutes=30)


_latest_cache: dict[datetime, dict[str, health.Reading]] = {}


def _latest(now: datetime) -> dict[str, health.Reading]:
    """Health readings, read once per evaluation however many health rules ask."""
    if now not in _latest_cache:
        _latest_cache.clear()
        _latest_cache[now] = health.latest(now - HEALTH_WINDOW)
    return _latest_cache[now]


@dataclass
class Finding:
    key: str
    subject: str
    message: str
    link: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _rollout_link(rollout: Rollout) -> str:
    return reverse("rollout-detail", args=[rollout.pk])


def _device_link(device_id: str) -> str:
    return reverse("device-detail", args=[device_id])


def _rollout(r: Rollout, what: str) -> Finding:
    return Finding(
        key=f"rollout:{r.pk}",
        subject=f"Rollout {r.pk} of {r.bundle_id} to {r.group.name} {what}",
        message=r.reason or what,
        link=_rollout_link(r),
        detail={"rollout": r.pk, "bundle": r.bundle_id, "group": r.group.name, "status": r.status},
    )


def rollout_paused(rule: Rule, now: datetime) -> list[Finding]:
    rows = Rollout.objects.filter(status=RolloutStatus.PAUSED).select_related("group")
    return [_rollout(r, "paused") for r in rows]


def rollout_rolled_back(rule: Rule, now: datetime) -> list[Finding]:
    rows = Rollout.objects.filter(
        status=RolloutStatus.ROLLED_BACK, finished_at__gte=now - RECENT
    ).select_related("group")
    return [_rollout(r, "rolled back") for r in rows]


def gate_failing(rule: Rule, now: datetime) -> list[Finding]:
    """Running rollouts whose last evaluation has a failing gate, and rollouts a gate
    just paused or rolled back."""
    found = []
    running = Rollout.objects.filter(status=RolloutStatus.RUNNING).select_related("group")
    for r in running:
        failing = [
            g for g in (r.last_evaluation or {}).get("gates", []) if g.get("status") == "fail"
        ]
        if failing:
            names = ", ".join(
                f"{g['name']}={g.get('value')} (limit {g.get('limit')})" for g in failing
            )
            found.append(
                Finding(
                    key=f"rollout:{r.pk}",
                    subject=f"Rollout {r.pk} to {r.group.name}: gate failing",
                    message=f"gate failing: {names}",
                    link=_rollout_link(r),
                    detail={"rollout": r.pk, "gates": failing},
                )
            )
    stopped = Rollout.objects.filter(
        Q(status=RolloutStatus.PAUSED)
        | Q(status=RolloutStatus.ROLLED_BACK, finished_at__gte=now - RECENT),
        reason__startswith="gate failed",
    ).select_related("group")
    for r in stopped:
        found.append(_rollout(r, f"stopped by a gate ({r.get_status_display().lower()})"))
    return found


def device_stale(rule: Rule, now: datetime) -> list[Finding]:
    minutes = rule.limit() or settings.DEVICE_STALE_SECONDS / 60
    cutoff = now - timedelta(minutes=minutes)
    rows = Device.objects.filter(revoked_at__isnull=True, last_seen_at__lt=cutoff)
    return [
        Finding(
            key=f"device:{d.pk}",
            subject=f"Device {d.name} stale",
            message=f"no contact since {d.last_seen_at:%Y-%m-%d %H:%M} UTC "
            f"(over {minutes:.0f} minutes)",
            link=_device_link(str(d.pk)),
            detail={"device": str(d.pk), "last_seen_at": d.last_seen_at.isoformat()},
        )
        for d in rows
        if d.last_seen_at is not None
    ]


def selftest_failed(rule: Rule, now: datetime) -> list[Finding]:
    events = (
        DeviceEvent.objects.filter(received_at__gte=now - SELFTEST_WINDOW)
        .filter(Q(state="selftest-failed") | Q(state="failed", reason__icontains="self-test"))
        .select_related("device")
        .order_by("received_at")
    )
    found: dict[str, Finding] = {}
    for e in events:  # the newest failure per device and bundle wins
        found[f"device:{e.device_id}:{e.bundle}"] = Finding(
            key=f"device:{e.device_id}:{e.bundle}",
            subject=f"Golden self-test failed on {e.device.name}",
            message=f"bundle {e.bundle}: {e.reason}",
            link=_device_link(str(e.device_id)),
            detail={"device": str(e.device_id), "bundle": e.bundle, "reason": e.reason},
        )
    return list(found.values())


def drift_above(rule: Rule, now: datetime) -> list[Finding]:
    limit = rule.limit()
    found = []
    for bundle in monitoring.version_shares():
        if bundle == "none":
            continue
        summary = monitoring.drift_summary(bundle)
        psi = summary["psi"]
        if psi is not None and limit is not None and psi > limit:
            found.append(
                Finding(
                    key=f"bundle:{bundle}",
                    subject=f"Confidence drift on {bundle}: PSI {psi:.3f}",
                    message=f"PSI {psi:.3f} over the last 24 h is above {limit} "
                    f"({summary['confidence_samples']} predictions)",
                    link=reverse("bundle-monitor", args=[bundle]),
                    detail={"bundle": bundle, "psi": psi, "limit": limit},
                )
            )
    return found


def _names(ids: list[str]) -> dict[str, str]:
    return {str(k): v for k, v in Device.objects.filter(pk__in=ids).values_list("pk", "name")}


def _health_rule(
    what: str, value_of: Callable[[health.Reading], float | None], above: bool, unit: str
) -> Callable[[Rule, datetime], list[Finding]]:
    def find(rule: Rule, now: datetime) -> list[Finding]:
        limit = rule.limit()
        latest = _latest(now)
        hits = []
        for device_id, reading in latest.items():
            value = value_of(reading)
            if value is None or limit is None:
                continue
            if (value > limit) if above else (value < limit):
                hits.append((device_id, value))
        names = _names([d for d, _ in hits])
        side = "above" if above else "below"
        return [
            Finding(
                key=f"device:{device_id}",
                subject=f"{what} on {names.get(device_id, device_id)}: {value:.0f} {unit}",
                message=f"{what} {value:.1f} {unit} ({side} {limit} {unit})",
                link=_device_link(device_id),
                detail={"device": device_id, "value": value, "limit": limit},
            )
            for device_id, value in hits
        ]

    return find


def outbox_dropping(rule: Rule, now: datetime) -> list[Finding]:
    latest = _latest(now)
    hits = {d: r.dropped for d, r in latest.items() if r.dropped > 0}
    names = _names(list(hits))
    return [
        Finding(
            key=f"device:{device_id}",
            subject=f"{names.get(device_id, device_id)} dropped {n} telemetry batches",
            message=f"its outbox was full and dropped {n} batches in the last "
            f"{int(HEALTH_WINDOW.total_seconds() // 60)} minutes (offline too long?)",
            link=_device_link(device_id),
            detail={"device": device_id, "dropped": n},
        )
        for device_id, n in hits.items()
    ]


FINDERS: dict[str, Callable[[Rule, datetime], list[Finding]]] = {
    RuleKind.ROLLOUT_PAUSED: rollout_paused,
    RuleKind.ROLLOUT_ROLLED_BACK: rollout_rolled_back,
    RuleKind.GATE_FAILING: gate_failing,
    RuleKind.DEVICE_STALE: device_stale,
    RuleKind.SELFTEST_FAILED: selftest_failed,
    RuleKind.DRIFT_ABOVE: drift_above,
    RuleKind.OUTBOX_DROPPING: outbox_dropping,
    RuleKind.MEMORY_ABOVE: _health_rule("Agent memory", lambda r: r.rss_mb, True, "MB"),
    RuleKind.TEMPERATURE_ABOVE: _health_rule("CPU temperature", lambda r: r.temp_c, True, "°C"),
    RuleKind.DISK_BELOW: _health_rule("Free disk", lambda r: r.disk_free_mb, False, "MB"),
    RuleKind.BACKLOG_ABOVE: _health_rule("Outbox backlog", lambda r: r.backlog, True, "batches"),
}


def findings(rule: Rule, now: datetime | None = None) -> list[Finding]:
    return FINDERS[rule.kind](rule, now or timezone.now())
