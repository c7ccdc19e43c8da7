"""Device health over time: memory, CPU, temperature, disk, energy, outbox.

The agent sends these gauges in each telemetry batch's `system` section (plus the
batch's `dropped` count); the hourly and daily rollups hold counters and histograms
only, so health reads the raw batches (kept TELEMETRY_RAW_RETENTION_DAYS) of the
devices asked about, with a time filter on an indexed column. Ingest is unchanged:
nothing here runs on the telemetry hot path.

A value a device cannot measure (no thermal zone, RAPL readable only by root) is
absent from its batches and shown as "not measured", never as zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from fleet.models import TelemetryBatch

# Chart bucket per time range: a point a minute up to 6 hours, an hour up to 3 days,
# a day beyond (each chart then has at most 360, 72 or a few dozen points).
BUCKETS: tuple[tuple[timedelta, str], ...] = (
    (timedelta(hours=6), "minute"),
    (timedelta(days=3), "hour"),
)
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
MB = 1024 * 1024
# The device page's health charts: (point key, title, unit).
CHARTS: tuple[tuple[str, str, str], ...] = (
    ("rss_mb", "Agent memory (resident)", "MB"),
    ("cpu_percent", "Agent CPU (% of one core)", "%"),
    ("temp_c", "CPU temperature", "°C"),
    ("disk_free_mb", "Free disk (state dir)", "MB"),
    ("energy_mj", "Energy per inference", "mJ"),
    ("backlog", "Outbox backlog", "batches"),
    ("dropped", "Dropped telemetry batches", "batches"),
)


def bucket_for(span: timedelta) -> str:
    """'minute', 'hour' or 'day': the chart bucket that reads well for this range."""
    for limit, name in BUCKETS:
        if span <= limit:
            return name
    return "day"


def parse_range(value: str | None, default: str = "24h") -> tuple[str, timedelta]:
    """A known range name (unknown or missing ones fall back to `default`)."""
    name = value if value in RANGES else default
    return name, RANGES[name]


def truncate(ts: datetime, bucket: str) -> datetime:
    ts = ts.astimezone(UTC)
    if bucket == "minute":
        return ts.replace(second=0, microsecond=0)
    if bucket == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass
class Reading:
    """One batch's gauges (None: the device did not measure it)."""

    device_id: str
    at: datetime
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    cpu_percent: float | None = None
    temp_c: float | None = None
    disk_free_mb: float | None = None
    energy_mj: float | None = None
    backlog: float | None = None
    dropped: int = 0


def _reading(row: Mapping[str, Any]) -> Reading:
    raw_system = row.get("system")
    system: dict[str, Any] = raw_system if isinstance(raw_system, dict) else {}
    start, end = row.get("period_start"), row.get("period_end")
    cpu = _number(system.get("cpu_seconds"))
    cpu_percent = None
    if cpu is not None and start is not None and end is not None:
        seconds = (end - start).total_seconds()
        cpu_percent = 100.0 * cpu / seconds if seconds > 0 else None

    def mb(key: str) -> float | None:
        value = _number(system.get(key))
        return None if value is None else value / MB

    dropped = _number(row.get("dropped"))
    return Reading(
        device_id=str(row["device_id"]),
        at=row["received_at"],
        rss_mb=mb("rss_bytes"),
        peak_rss_mb=mb("peak_rss_bytes"),
        cpu_percent=cpu_percent,
        temp_c=_number(system.get("cpu_temp_c")),
        disk_free_mb=mb("disk_free_bytes"),
        energy_mj=_number(system.get("energy_per_inference_mj")),
        backlog=_number(system.get("outbox_pending")),
        dropped=int(dropped or 0),
    )


def readings(since: datetime, device_ids: Iterable[str] | None = None) -> list[Reading]:
    """Every batch's gauges since `since`, oldest first (one query, JSON keys only)."""
    rows = TelemetryBatch.objects.filter(received_at__gte=since)
    if device_ids is not None:
        rows = rows.filter(device_id__in=list(device_ids))
    values = rows.order_by("received_at").values(
        "device_id",
        "received_at",
        "period_start",
        "period_end",
        system=KeyTransform("system", "body"),
        dropped=KeyTransform("dropped", "body"),
    )
    return [_reading(row) for row in values]


def latest(since: datetime, device_ids: Iterable[str] | None = None) -> dict[str, Reading]:
    """Each device's newest reading since `since`, with `dropped` summed over the window."""
    found: dict[str, Reading] = {}
    dropped: dict[str, int] = {}
    for reading in readings(since, device_ids):
        dropped[reading.device_id] = dropped.get(reading.device_id, 0) + reading.dropped
        found[reading.device_id] = reading
    for device_id, reading in found.items():
        reading.dropped = dropped[device_id]
    return found


@dataclass
class _Bucket:
    at: datetime
    values: dict[str, list[float]] = field(default_factory=dict)
    dropped: int = 0
    batches: int = 0


# Per gauge, how a bucket summarises its readings: the worst value for what has a limit
# (memory, heat, backlog up; disk down), the mean for rates.
_SUMMARY: dict[str, Callable[[list[float]], float]] = {
    "rss_mb": max,
    "peak_rss_mb": max,
    "cpu_percent": lambda v: sum(v) / len(v),
    "temp_c": max,
    "disk_free_mb": min,
    "energy_mj": lambda v: sum(v) / len(v),
    "backlog": max,
}


def series(device_id: str, span: timedelta, now: datetime | None = None) -> dict[str, Any]:
    """One device's health in buckets chosen from the range (see `bucket_for`)."""
    now = now or timezone.now()
    bucket = bucket_for(span)
    buckets: dict[datetime, _Bucket] = {}
    for reading in readings(now - span, [device_id]):
        key = truncate(reading.at, bucket)
        b = buckets.setdefault(key, _Bucket(key))
        b.batches += 1
        b.dropped += reading.dropped
        for name in _SUMMARY:
            value = getattr(reading, name)
            if value is not None:
                b.values.setdefault(name, []).append(value)
    points = []
    for key in sorted(buckets):
        b = buckets[key]
        point: dict[str, Any] = {"at": key.isoformat(), "batches": b.batches, "dropped": b.dropped}
        for name, summary in _SUMMARY.items():
            got = b.values.get(name)
            point[name] = round(summary(got), 3) if got else None
        points.append(point)
    return {"bucket": bucket, "points": points}


def as_dict(reading: Reading) -> dict[str, Any]:
    out = asdict(reading)
    out["at"] = reading.at.isoformat()
    return out


# What the agent uses unless configured otherwise (tinyfleet_agent.config).
AGENT_TELEMETRY_INTERVAL = timedelta(seconds=300)


def next_expected(device_ids: list[str], now: datetime | None = None) -> datetime | None:
    """When the next telemetry batch of any of these devices should arrive: each
    device's last batch plus its observed interval (the gap between its last two
    batches), or its last contact plus the agent's default interval."""
    from fleet.models import Device

    now = now or timezone.now()
    best: datetime | None = None
    for device in Device.objects.filter(pk__in=device_ids, revoked_at__isnull=True):
        last_two = list(
            TelemetryBatch.objects.filter(device=device)
            .order_by("-received_at")
            .values_list("received_at", flat=True)[:2]
        )
        interval = AGENT_TELEMETRY_INTERVAL
        if len(last_two) == 2 and last_two[0] > last_two[1]:
            interval = last_two[0] - last_two[1]
        base = last_two[0] if last_two else (device.last_seen_at or device.enrolled_at)
        expected = base + interval
        while expected < now - interval:  # overdue for long: say "any moment" not the past
            expected += interval
        best = expected if best is None or expected < best else best
    return best


def device_context(device_id: str, range_name: str | None) -> dict[str, Any]:
    """What the device page's health section shows."""
    name, span = parse_range(range_name)
    data = series(device_id, span)
    measured = {
        key: any(p[key] is not None for p in data["points"]) if key != "dropped" else True
        for key in (*_SUMMARY, "dropped")
    }
    return {
        "range": name,
        "ranges": list(RANGES),
        "measured_keys": [k for k, v in measured.items() if v],
        "bucket": data["bucket"],
        "points": data["points"],
        "measured": measured,
        "next_expected": None if data["points"] else next_expected([device_id]),
    }
