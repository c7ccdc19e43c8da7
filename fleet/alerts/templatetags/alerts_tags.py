"""Fleet overview panels from the alerts app: open alerts, and each device's latest
health judged against the alert rules' thresholds (so the page and the alerts agree)."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils import timezone

from fleet.alerts.models import Alert, Rule, RuleKind
from fleet.alerts.rules import HEALTH_WINDOW
from fleet.models import Device
from fleet.telemetry import health

register = template.Library()
MAX_DEVICES = 200

# (rule kind, reading attribute, True when the limit is an upper bound)
_LIMITS = (
    (RuleKind.MEMORY_ABOVE, "rss_mb", True),
    (RuleKind.TEMPERATURE_ABOVE, "temp_c", True),
    (RuleKind.DISK_BELOW, "disk_free_mb", False),
    (RuleKind.BACKLOG_ABOVE, "backlog", True),
)


@register.inclusion_tag("alerts/_open_alerts.html")
def open_alerts_panel() -> dict[str, Any]:
    alerts = Alert.objects.filter(resolved_at__isnull=True).select_related("rule")[:50]
    return {"open_alerts": alerts}


def _limits() -> dict[str, float | None]:
    rules = {r.kind: r for r in Rule.objects.filter(kind__in=[k for k, _, _ in _LIMITS])}
    return {
        attr: rules[kind].limit() if kind in rules and rules[kind].enabled else None
        for kind, attr, _ in _LIMITS
    }


def _row(device: Device, reading: health.Reading | None, limits: dict[str, Any]) -> dict[str, Any]:
    flags = []
    if reading is not None:
        for kind, attr, upper in _LIMITS:
            value, limit = getattr(reading, attr), limits.get(attr)
            if value is None or limit is None:
                continue
            if (value > limit) if upper else (value < limit):
                flags.append(f"{RuleKind(kind).label} {limit:g}")
        if reading.dropped:
            flags.append("dropping telemetry")
    return {"device": device, "reading": reading, "flags": flags}


@register.inclusion_tag("alerts/_fleet_health.html")
def fleet_health_table() -> dict[str, Any]:
    since = timezone.now() - HEALTH_WINDOW
    devices = list(Device.objects.filter(revoked_at__isnull=True)[: MAX_DEVICES + 1])
    latest = health.latest(since, [str(d.pk) for d in devices[:MAX_DEVICES]])
    limits = _limits()
    rows = [_row(d, latest.get(str(d.pk)), limits) for d in devices[:MAX_DEVICES]]
    rows.sort(key=lambda r: (-len(r["flags"]), r["reading"] is None, r["device"].name))
    return {
        "rows": rows,
        "more": len(devices) > MAX_DEVICES,
        "window_minutes": int(HEALTH_WINDOW.total_seconds() // 60),
    }
