"""The in-field page's series at a bucket that suits its range, fleet-wide or per group.

Hour and day buckets merge the hourly rollups (`BundleGroupHour`). Minute buckets, for
short ranges, come from the raw batches of the range, folded in memory exactly as the
rollups fold them (same validation, same merge); above MINUTE_BATCH_LIMIT raw batches
the page falls back to hours and says so, so a large fleet's page stays cheap.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from fleet.models import Assignment, BundleGroupHour, Group, TelemetryBatch
from fleet.telemetry import drift, health, monitoring
from fleet.telemetry.evidence import BundleEvidence
from fleet.telemetry.rollups import add_to_row, contributions
from fleet.telemetry.validation import TelemetryError

# Above this many raw batches in the range, minute buckets give way to hours: folding
# raw batches costs ~0.2 s of CPU per 1,000 plus fetching them (bench/monitor_pages.py).
MINUTE_BATCH_LIMIT = 2_000
SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
# The in-field page's ranges; minute buckets up to 6 h (at most 360 points).
RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


def bucket_for(span: timedelta) -> str:
    if span <= timedelta(hours=6):
        return "minute"
    return "hour" if span <= timedelta(days=3) else "day"


@dataclass
class _Bucket:
    evidence: BundleEvidence = field(default_factory=BundleEvidence)
    devices: set[str] = field(default_factory=set)
    hourly_devices: dict[datetime, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def device_count(self) -> int:
        # Distinct devices do not add across hours: a day shows its busiest hour.
        if self.devices:
            return len(self.devices)
        return max(self.hourly_devices.values(), default=0)


def _members(group: Group | None) -> list[str] | None:
    if group is None:
        return None
    return [str(pk) for pk in group.members().values_list("pk", flat=True)]


def _from_raw(bundle_id: str, since: datetime, group: Group | None) -> dict[datetime, _Bucket]:
    batches = TelemetryBatch.objects.filter(received_at__gte=since)
    members = _members(group)
    if members is not None:
        batches = batches.filter(device_id__in=members)
    buckets: dict[datetime, _Bucket] = {}
    # Only the per-bundle sections travel (bucket edges were checked at ingest).
    rows = batches.values_list("device_id", "received_at", KeyTransform("bundles", "body"))
    for device_id, received, sections in rows:
        try:
            parts = [p for p in contributions({"bundles": sections}) if p.bundle == bundle_id]
        except TelemetryError:
            continue  # stored before a stricter check: skip, as a rebuild would
        if not parts:
            continue
        key = health.truncate(received, "minute")
        bucket = buckets.setdefault(key, _Bucket())
        row = BundleGroupHour()  # unsaved: folded exactly as ingest folds, never written
        for part in parts:
            add_to_row(row, part)
        bucket.evidence.add_row(row, str(device_id))
        bucket.devices.add(str(device_id))
    return buckets


def _from_rollups(
    bundle_id: str, since: datetime, group: Group | None, bucket: str
) -> dict[datetime, _Bucket]:
    rows = BundleGroupHour.objects.filter(
        bundle=bundle_id, hour__gte=health.truncate(since, "hour"), group=group
    )
    buckets: dict[datetime, _Bucket] = {}
    for row in rows.order_by("hour", "shard"):
        key = health.truncate(row.hour, bucket)
        b = buckets.setdefault(key, _Bucket())
        b.evidence.add_row(row, str(row.pk))
        b.hourly_devices[row.hour] += row.devices
    return buckets


def chart(
    bundle_id: str, span: timedelta, group: Group | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """{"bucket", "rows", "note"} for the in-field page."""
    now = now or timezone.now()
    since = now - span
    bucket, note = bucket_for(span), ""
    if bucket == "minute":
        raw = TelemetryBatch.objects.filter(received_at__gte=since)
        members = _members(group)
        if members is not None:
            raw = raw.filter(device_id__in=members)
        if raw.count() > MINUTE_BATCH_LIMIT:
            bucket = "hour"
            note = (
                f"More than {MINUTE_BATCH_LIMIT} batches in this range: shown per hour "
                "from the rollups."
            )
    buckets = (
        _from_raw(bundle_id, since, group)
        if bucket == "minute"
        else _from_rollups(bundle_id, since, group, bucket)
    )
    reference = drift.reference_for_bundle(bundle_id)
    rows = [
        {
            "at": key.isoformat(),
            "devices": b.device_count,
            **monitoring._numbers(b.evidence, reference, SECONDS[bucket]),
        }
        for key, b in sorted(buckets.items())
    ]
    return {"bucket": bucket, "rows": rows, "note": note}


def devices_running(bundle_id: str, group: Group | None = None) -> list[str]:
    """Devices currently told to run this bundle (in the group, if one is given)."""
    ids = Assignment.objects.filter(bundle_id=bundle_id, ended_at__isnull=True).values_list(
        "device_id", flat=True
    )
    found = {str(pk) for pk in ids}
    members = _members(group)
    return sorted(found if members is None else found & set(members))
