"""Deferred rollups (`TINYFLEET_TELEMETRY_FOLD=deferred`): ingest stores each batch raw
and marks it pending; `fold_pending` adds pending batches to the rollups in chunks.

Why: adding a batch to its rollup rows inside the request costs several row locks and
updates per batch (bench/reports/rollup_storage.md), which caps telemetry requests per
second. Deferred, a request is one INSERT, and a Celery task does the rollup work off the
request path, a chunk of batches per transaction.

Exactness: a batch is counted once because marking it folded happens in the same
transaction as adding it; replays are still refused at ingest by the unique batch id.
One fold runs at a time (a PostgreSQL advisory lock; SQLite runs one writer anyway), so
folds never wait on each other's row locks, and a rollup rebuild takes the same lock.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection, transaction

from fleet.models import TelemetryBatch
from fleet.telemetry.rollups import (
    add_device_day,
    add_hourly,
    contributions,
    group_ids_for,
    rollup_hour,
    shard_of,
)
from fleet.telemetry.validation import TelemetryError

log = logging.getLogger(__name__)
FOLD_CHUNK = 500
# Any constant shared by the fold and the rebuild: pg_advisory_xact_lock's key.
_FOLD_LOCK_KEY = 0x7F1EE7F01D


def take_fold_lock(wait: bool) -> bool:
    """Serialise with other folds and rebuilds until the transaction ends. Returns False
    (without waiting) when `wait` is False and another holds it."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_FOLD_LOCK_KEY])
            return True
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_FOLD_LOCK_KEY])
        row = cursor.fetchone()
        return bool(row and row[0])


def pending_count() -> int:
    return TelemetryBatch.objects.filter(folded=False).count()


def fold_pending(max_batches: int = 20_000) -> dict[str, int]:
    """Fold up to `max_batches` pending batches, oldest first, a chunk per transaction.

    Returns {"folded": n, "skipped": m, "busy": 1 if another fold held the lock}.
    """
    result = {"folded": 0, "skipped": 0, "busy": 0}
    while result["folded"] + result["skipped"] < max_batches:
        limit = min(FOLD_CHUNK, max_batches - result["folded"] - result["skipped"])
        chunk = _fold_chunk(limit)
        if chunk is None:
            result["busy"] = 1
            break
        folded, skipped = chunk
        result["folded"] += folded
        result["skipped"] += skipped
        if folded + skipped < limit:
            break
    return result


def _fold_chunk(limit: int) -> tuple[int, int] | None:
    with transaction.atomic():
        if not take_fold_lock(wait=False):
            return None
        rows = list(
            TelemetryBatch.objects.filter(folded=False)
            .select_related("device")
            .order_by("id")[:limit]
        )
        skipped = _fold_rows(rows)
        TelemetryBatch.objects.filter(pk__in=[b.pk for b in rows]).update(folded=True)
    return len(rows) - skipped, skipped


def _fold_rows(rows: list[TelemetryBatch]) -> int:
    """Add a chunk to the rollups; returns how many batches no longer validate.

    Device-day rows are updated per batch; the hourly rows, which many devices share, are
    updated once per chunk for each (hour, shard, groups) the chunk touches. Rows of one
    (hour, shard) reached from different group sets are written before the next set
    reads them, so every addition lands.
    """
    groups: dict[Any, list[int]] = {}
    hourly: dict[tuple[Any, int, tuple[int, ...]], list[Any]] = {}
    skipped = 0
    for batch in rows:
        try:
            parts = contributions(batch.body)
        except TelemetryError as exc:
            # Validated at ingest; only a schema change could make it fail here.
            log.warning("telemetry batch %s no longer validates: %s", batch.batch_id, exc)
            skipped += 1
            continue
        if batch.device_id not in groups:
            groups[batch.device_id] = group_ids_for(batch.device)
        hour = rollup_hour(batch.period_end, batch.received_at)
        first_in_hour = add_device_day(batch.device, hour, parts)
        key = (hour, shard_of(batch.device), tuple(groups[batch.device_id]))
        hourly.setdefault(key, []).append((parts, first_in_hour))
    for (hour, shard, group_ids), entries in sorted(hourly.items(), key=lambda kv: kv[0]):
        add_hourly(hour, shard, list(group_ids), entries)
    return skipped
