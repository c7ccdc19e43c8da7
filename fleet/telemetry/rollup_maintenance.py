"""Rebuilding rollups from raw batches, and telemetry retention.

A rebuild replaces the rollups of whole UTC days with what the raw batches say (after a
migration, a bug fix, or a repair). It refuses days whose raw batches retention may
already have deleted, since it would replace real rollups with less. Retention deletes
in bounded batches so a beat run never holds long locks; the next run continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone

from fleet.models import BundleGroupHour, DeviceDay, TelemetryBatch
from fleet.telemetry.rollups import (
    CLOCK_SKEW,
    MAX_BACKDATE,
    apply,
    contributions,
    group_ids_for,
    rollup_hour,
)
from fleet.telemetry.validation import TelemetryError

DELETE_BATCH = 5000
MAX_DELETE_BATCHES = 50  # per model and run: at most 250,000 rows per table per hour


class RebuildError(ValueError):
    """A rebuild that cannot be done as asked; nothing was changed."""


@dataclass
class RebuildResult:
    start: datetime
    end: datetime
    batches: int = 0
    skipped: int = 0  # raw batches whose body no longer validates

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "batches": self.batches,
            "skipped": self.skipped,
        }


def _day_floor(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(UTC).date(), time(), tzinfo=UTC)


def _block_ingest() -> None:
    # SHARE mode conflicts with the ROW EXCLUSIVE lock an INSERT takes: ingest waits for
    # the rebuild, so no batch lands in rows that are being replaced. SQLite needs
    # nothing, its IMMEDIATE transactions already run one writer at a time.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(TelemetryBatch._meta.db_table)
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")


def rebuild(start: datetime, end: datetime, *, now: datetime | None = None) -> RebuildResult:
    """Recompute the rollups of the UTC days [start's day, end's day) from raw batches.

    Raises:
        RebuildError: an empty range, or one reaching back past raw retention.
    """
    first, last = _day_floor(start), _day_floor(end)
    if end > last:
        last += timedelta(days=1)
    if last <= first:
        raise RebuildError("the range to rebuild is empty")
    kept_since = (now or timezone.now()) - timedelta(days=settings.TELEMETRY_RAW_RETENTION_DAYS)
    if first < kept_since:
        earliest = _day_floor(kept_since) + timedelta(days=1)
        raise RebuildError(
            f"raw batches before {kept_since:%Y-%m-%d %H:%M} UTC may already be deleted "
            f"(TINYFLEET_TELEMETRY_RAW_RETENTION_DAYS); rebuild from {earliest:%Y-%m-%d} on"
        )
    result = RebuildResult(first, last)
    from fleet.telemetry.rollup_fold import take_fold_lock

    with transaction.atomic():
        take_fold_lock(wait=True)  # no fold interleaves with the rows being replaced
        _block_ingest()
        BundleGroupHour.objects.filter(hour__gte=first, hour__lt=last).delete()
        DeviceDay.objects.filter(day__gte=first.date(), day__lt=last.date()).delete()
        raw = TelemetryBatch.objects.filter(
            received_at__gte=first - CLOCK_SKEW, received_at__lt=last + MAX_BACKDATE
        ).select_related("device")
        groups: dict[Any, list[int]] = {}
        pending: list[int] = []  # deferred batches counted here must not be folded again
        for batch in raw.order_by("received_at", "id").iterator(chunk_size=500):
            hour = rollup_hour(batch.period_end, batch.received_at)
            if not first <= hour < last:
                continue
            try:
                parts = contributions(batch.body)
            except TelemetryError:
                result.skipped += 1
                continue
            if batch.device_id not in groups:
                groups[batch.device_id] = group_ids_for(batch.device)
            apply(batch.device, hour, parts, groups[batch.device_id])
            result.batches += 1
            if not batch.folded:
                pending.append(batch.pk)
        TelemetryBatch.objects.filter(pk__in=pending).update(folded=True)
    return result


def _delete_old(queryset: models.QuerySet[Any]) -> int:
    deleted = 0
    for _ in range(MAX_DELETE_BATCHES):
        ids = list(queryset.values_list("pk", flat=True)[:DELETE_BATCH])
        if not ids:
            break
        deleted += queryset.model.objects.filter(pk__in=ids).delete()[0]
    return deleted


def enforce_retention(now: datetime | None = None) -> dict[str, int]:
    """Delete raw batches and rollups older than their retention (bounded per run)."""
    now = now or timezone.now()
    raw_cutoff = now - timedelta(days=settings.TELEMETRY_RAW_RETENTION_DAYS)
    rollup_cutoff = now - timedelta(days=settings.TELEMETRY_ROLLUP_RETENTION_DAYS)
    return {
        # Never a batch still waiting to be folded (deferred mode): it would be lost.
        "raw_batches": _delete_old(
            TelemetryBatch.objects.filter(received_at__lt=raw_cutoff, folded=True)
        ),
        "hourly_rollups": _delete_old(BundleGroupHour.objects.filter(hour__lt=rollup_cutoff)),
        "daily_rollups": _delete_old(
            DeviceDay.objects.filter(day__lt=rollup_cutoff.astimezone(UTC).date())
        ),
    }
