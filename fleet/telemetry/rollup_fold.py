"""Deferred rollups (`TINYFLEET_TELEMETRY_FOLD=deferred`): ingest stores each batch raw
and marks it pending; `fold_pending` adds pending batches to the rollups in chunks.

Why: adding a batch to its rollup rows inside the request costs several row locks and
updates per batch (bench/reports/rollup_storage.md), which caps telemetry requests per
second. Deferred, a request is one INSERT, and a Celery task does the rollup work off the
request path, a chunk of batches per transaction.

Exactness: a batch is counted once because marking it folded happens in the same
transaction as adding it; replays are still refused at ingest by the unique batch id.

Parallel folds: pending batches are partitioned by device like the hourly rollup rows
(`shard_of`, HOURLY_SHARDS partitions), and each partition has its own PostgreSQL
advisory lock. A partition is folded by one folder at a time, so folds never wait on
each other's row locks, and folders on different partitions write disjoint rows: N
Celery workers fold up to N partitions at once. A rollup rebuild takes every partition's
lock. SQLite runs one writer anyway: one partition there.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from django.db import connection, transaction

from fleet.models import TelemetryBatch
from fleet.models.rollups import DeviceDay
from fleet.telemetry import rollups
from fleet.telemetry.rollups import (
    add_hourly,
    add_to_row,
    contributions,
    group_ids_for_many,
    rollup_hour,
    shard_of,
)
from fleet.telemetry.validation import TelemetryError

log = logging.getLogger(__name__)
FOLD_CHUNK = 500
# Any constant shared by the fold and the rebuild: pg_advisory_xact_lock's key for
# partition p is _FOLD_LOCK_KEY + p.
_FOLD_LOCK_KEY = 0x7F1EE7F01D


def partition_count() -> int:
    """Folds are partitioned like the hourly rows: partition p holds the devices of shard
    p (`shard_of`), so two partitions never touch the same device-day or hourly row and
    fold in parallel without waiting on each other's row locks."""
    shards = rollups.HOURLY_SHARDS
    if not 0 < shards <= 256 or shards & (shards - 1):
        raise ValueError("HOURLY_SHARDS must be a power of two up to 256")
    return shards if connection.vendor == "postgresql" else 1


def take_fold_lock(wait: bool, partition: int | None = None) -> bool:
    """Serialise with other folds of `partition` (None: every partition, for a rebuild)
    until the transaction ends. Returns False (without waiting) when `wait` is False and
    another holds a lock asked for."""
    if connection.vendor != "postgresql":
        return True
    wanted = range(partition_count()) if partition is None else [partition]
    with connection.cursor() as cursor:
        for p in wanted:  # ascending: two rebuilds cannot deadlock
            if wait:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_FOLD_LOCK_KEY + p])
                continue
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_FOLD_LOCK_KEY + p])
            row = cursor.fetchone()
            if not (row and row[0]):
                return False
    return True


def pending_count() -> int:
    return TelemetryBatch.objects.filter(folded=False).count()


def fold_pending(max_batches: int = 20_000) -> dict[str, int]:
    """Fold up to `max_batches` pending batches, a chunk per transaction, partition by
    partition (round robin, from a random start so concurrent folders spread out). A
    partition another folder holds is retried on the next pass; the fold ends when its
    partitions are drained or every one left is held by another folder.

    Returns {"folded": n, "skipped": m, "busy": partitions left to other folders}.
    """
    result = {"folded": 0, "skipped": 0, "busy": 0}
    count = partition_count()
    start = random.randrange(count)  # spreading concurrent folders, not security
    todo = [(start + i) % count for i in range(count)]
    while todo and result["folded"] + result["skipped"] < max_batches:
        progressed = False
        for partition in list(todo):
            limit = min(FOLD_CHUNK, max_batches - result["folded"] - result["skipped"])
            if limit <= 0:
                break
            chunk = _fold_chunk(limit, partition, count)
            if chunk is None:
                continue  # another folder is in this partition: retry on the next pass
            progressed = True
            folded, skipped = chunk
            result["folded"] += folded
            result["skipped"] += skipped
            if folded + skipped < limit:
                todo.remove(partition)  # drained
        if not progressed:
            result["busy"] = len(todo)
            break
    return result


def _partition_ids(limit: int, partition: int, count: int) -> list[int]:
    """Oldest pending batch ids of the devices in `partition`."""
    pending = TelemetryBatch.objects.filter(folded=False).order_by("id")
    if count == 1:
        return list(pending.values_list("pk", flat=True)[:limit])
    # shard_of(device) = UUID.int % count: the low bits of the UUID's last byte.
    table = TelemetryBatch._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {table} WHERE folded = false "  # noqa: S608
            "AND get_byte(uuid_send(device_id), 15) %% %s = %s ORDER BY id LIMIT %s",
            [count, partition, limit],
        )
        return [row[0] for row in cursor.fetchall()]


def _fold_chunk(limit: int, partition: int, count: int) -> tuple[int, int] | None:
    with transaction.atomic():
        if not take_fold_lock(wait=False, partition=partition if count > 1 else None):
            return None
        ids = _partition_ids(limit, partition, count)
        rows = list(
            TelemetryBatch.objects.filter(pk__in=ids).select_related("device").order_by("id")
        )
        skipped = _fold_rows(rows)
        TelemetryBatch.objects.filter(pk__in=ids).update(folded=True)
    return len(rows) - skipped, skipped


class _DayRows:
    """A chunk's device-day rows: each locked and read once, updated in memory batch by
    batch (in order, so `first_in_hour` is what one batch at a time would see), and
    written once. A device usually has several batches in a chunk."""

    def __init__(self) -> None:
        self.rows: dict[tuple[Any, str, Any], DeviceDay] = {}

    def add(self, device: Any, hour: Any, parts: list[Any]) -> dict[str, bool]:
        day, bit = hour.date(), 1 << hour.hour
        first_in_hour: dict[str, bool] = {}
        for part in parts:
            key = (device.pk, part.bundle, day)
            row = self.rows.get(key)
            if row is None:
                row, _ = DeviceDay.objects.select_for_update().get_or_create(
                    device=device, bundle=part.bundle, day=day
                )
                self.rows[key] = row
            first_in_hour[part.bundle] = not row.hours_mask & bit
            row.hours_mask |= bit
            add_to_row(row, part)
        return first_in_hour

    def save(self) -> None:
        for row in self.rows.values():
            row.save()


def _fold_rows(rows: list[TelemetryBatch]) -> int:
    """Add a chunk to the rollups; returns how many batches no longer validate.

    Device-day rows are locked in the order the chunk reaches them and written once per
    chunk; the hourly rows, which many devices share, are updated once per chunk for
    each (hour, shard, groups) the chunk touches. Rows of one (hour, shard) reached from
    different group sets are written before the next set reads them, so every addition
    lands.
    """
    groups = group_ids_for_many(list({batch.device_id: batch.device for batch in rows}.values()))
    days = _DayRows()
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
        hour = rollup_hour(batch.period_end, batch.received_at)
        first_in_hour = days.add(batch.device, hour, parts)
        key = (hour, shard_of(batch.device), tuple(groups[batch.device_id]))
        hourly.setdefault(key, []).append((parts, first_in_hour))
    days.save()
    for (hour, shard, group_ids), entries in sorted(hourly.items(), key=lambda kv: kv[0]):
        add_hourly(hour, shard, list(group_ids), entries)
    return skipped
