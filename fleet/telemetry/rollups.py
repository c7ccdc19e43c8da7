"""Telemetry ingest into raw batches and rollups, in one transaction (or, with
TINYFLEET_TELEMETRY_FOLD=deferred, raw only and folded later: fleet/telemetry/rollup_fold.py).

The raw `TelemetryBatch` insert is what makes a batch id count once: a replay (or the
same batch racing itself) fails on the unique batch id before any rollup is touched, so
replays never double-count. Rollup rows are locked (`SELECT ... FOR UPDATE` on
PostgreSQL; SQLite runs writers one at a time) in one global order, device-day rows
first then bundle-group-hour rows sorted by (bundle, group), so concurrent batches
serialise on the rows they share and never deadlock.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from tinyfleet_agent.protocol import (
    CONFIDENCE_EDGES,
    INPUT_LENGTH_EDGES,
    LATENCY_EDGES_MS,
)

from fleet.models import Device, Group, TelemetryBatch
from fleet.models.devices import parse_selector, selector_matches
from fleet.models.rollups import BundleGroupHour, DeviceDay, RollupCounters
from fleet.telemetry.validation import TelemetryError

# The agent's fixed bucket edges: every histogram is len(edges) + 1 counts.
EDGES: dict[str, tuple[float, ...]] = {
    "latency_ms": LATENCY_EDGES_MS,
    "input_tokens": INPUT_LENGTH_EDGES,
    "confidence": CONFIDENCE_EDGES,
}
# Histogram name in a batch -> rollup field holding its merged counts.
HISTOGRAM_FIELDS = {
    "latency_ms": "latency_counts",
    "input_tokens": "input_tokens_counts",
    "confidence": "confidence_counts",
}
HOURLY_FIELDS = [
    f.name
    for f in BundleGroupHour._meta.concrete_fields
    if f.name not in ("id", "bundle", "group", "hour", "shard")
]
# Hourly rows per bundle, group and hour (see BundleGroupHour.shard). More shards, less
# queueing on hot rows; readers merge up to this many rows per hour.
HOURLY_SHARDS = 8
MAX_COUNT = 2**40  # per value in one batch: far above any real period, below overflow
# Distinct labels (each way of the confusion counts) and error kinds kept per rollup row;
# the rest fold into OTHER so a misbehaving device cannot grow a row without bound
# (totals and accuracy stay exact).
MAX_LABELS = 100
MAX_ERROR_KINDS = 50
OTHER = "(other)"
# Device clocks may be wrong: a batch is filed under its period end only when that is
# plausible (not in the future, not older than an outbox could hold it); else under the
# time the server received it.
CLOCK_SKEW = timedelta(minutes=5)
MAX_BACKDATE = timedelta(days=30)


@dataclass
class Contribution:
    """What one batch adds for one bundle."""

    bundle: str
    requests: int = 0
    inferences: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, list[int]] = field(default_factory=dict)
    low_confidence: int = 0
    golden_runs: int = 0
    golden_failed: int = 0
    golden_agreement: float | None = None
    feedback: dict[tuple[str, str], int] = field(default_factory=dict)


def _count(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise TelemetryError(f"{where} must be a whole number between 0 and {MAX_COUNT}")
    return value


def _check_edges(batch: dict[str, Any]) -> None:
    buckets = batch.get("buckets") or {}
    if not isinstance(buckets, dict):
        raise TelemetryError("buckets must be an object")
    for name, edges in buckets.items():
        fixed = EDGES.get(name)
        if fixed is None:
            continue
        same = isinstance(edges, list) and len(edges) == len(fixed)
        if not same or not all(
            isinstance(e, (int, float)) and math.isclose(e, f, rel_tol=1e-5)
            for e, f in zip(edges, fixed, strict=True)
        ):
            raise TelemetryError(f"buckets.{name} differ from the fixed edges of schema 1")


def _histogram(section: dict[str, Any], name: str, where: str) -> list[int] | None:
    counts = section.get(name)
    if counts is None or counts == []:
        return None
    if not isinstance(counts, list) or len(counts) != len(EDGES[name]) + 1:
        raise TelemetryError(f"{where}.{name} must list {len(EDGES[name]) + 1} counts")
    return [_count(c, f"{where}.{name}") for c in counts]


def _golden(c: Contribution, golden: Any, where: str) -> None:
    if not golden:
        return
    if not isinstance(golden, dict):
        raise TelemetryError(f"{where}.golden must be an object")
    c.golden_runs += _count(golden.get("runs"), f"{where}.golden.runs")
    c.golden_failed += _count(golden.get("failed"), f"{where}.golden.failed")
    # The agent reports the min and last agreement of its periodic self-tests.
    agreement = golden.get("min_agreement", golden.get("agreement"))
    if agreement is None:
        return
    if isinstance(agreement, bool) or not isinstance(agreement, (int, float)):
        raise TelemetryError(f"{where}.golden agreement must be a number")
    if not 0 <= agreement <= 1:
        raise TelemetryError(f"{where}.golden agreement must be between 0 and 1")
    value = float(agreement)
    c.golden_agreement = value if c.golden_agreement is None else min(c.golden_agreement, value)


def _feedback(c: Contribution, items: Any, where: str) -> None:
    if not isinstance(items, list):
        raise TelemetryError(f"{where}.feedback must be a list")
    for item in items:
        if not isinstance(item, dict):
            raise TelemetryError(f"{where}.feedback items must be objects")
        pair = (str(item.get("predicted")), str(item.get("actual")))
        c.feedback[pair] = c.feedback.get(pair, 0) + _count(item.get("count"), f"{where}.count")


def _add_section(c: Contribution, section: dict[str, Any], where: str) -> None:
    c.requests += _count(section.get("requests"), f"{where}.requests")
    c.inferences += _count(section.get("inferences"), f"{where}.inferences")
    c.low_confidence += _count(section.get("low_confidence"), f"{where}.low_confidence")
    errors = section.get("errors") or {}
    if not isinstance(errors, dict):
        raise TelemetryError(f"{where}.errors must be an object of counts")
    for kind, n in errors.items():
        c.errors_by_kind[kind] = c.errors_by_kind.get(kind, 0) + _count(n, f"{where}.errors")
    for name in EDGES:
        counts = _histogram(section, name, where)
        if counts is not None:
            c.histograms[name] = _merge_counts(c.histograms.get(name, []), counts)
    _golden(c, section.get("golden"), where)
    _feedback(c, section.get("feedback") or [], where)


def contributions(batch: dict[str, Any]) -> list[Contribution]:
    """Per-bundle contributions of a parsed batch, sorted by bundle.

    Raises:
        TelemetryError: a bundle section with wrong types, negative counts, histograms of
            the wrong length or bucket edges other than the agent's fixed ones.
    """
    sections = batch.get("bundles") or []
    if not isinstance(sections, list):
        raise TelemetryError("bundles must be a list")
    _check_edges(batch)
    merged: dict[str, Contribution] = {}
    for index, section in enumerate(sections):
        where = f"bundles[{index}]"
        if not isinstance(section, dict):
            raise TelemetryError(f"{where} must be an object")
        bundle = section.get("bundle")
        if not isinstance(bundle, str) or not 0 < len(bundle) <= 64:
            raise TelemetryError(f"{where}.bundle must be a bundle id")
        _add_section(merged.setdefault(bundle, Contribution(bundle)), section, where)
    return [merged[b] for b in sorted(merged)]


def rollup_hour(period_end: datetime | None, received_at: datetime) -> datetime:
    """The UTC hour a batch is filed under (device time only when it is plausible)."""
    stamp = received_at
    if period_end is not None and period_end.tzinfo is not None:
        lowest, highest = received_at - MAX_BACKDATE, received_at + CLOCK_SKEW
        stamp = period_end if lowest <= period_end <= highest else received_at
    return stamp.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def group_ids_for(device: Device) -> list[int]:
    """Groups the device belongs to now: explicit membership or a matching selector."""
    ids = set(device.groups.values_list("pk", flat=True))
    for group in Group.objects.exclude(selector="").only("pk", "selector"):
        if selector_matches(parse_selector(group.selector), device.labels or {}):
            ids.add(group.pk)
    return sorted(ids)


class _KnownBatchError(Exception):
    """The batch id is already stored (a replay, or the same batch racing itself)."""


def store_batch(
    device: Device,
    batch: dict[str, Any],
    raw_body: dict[str, Any],
    received_at: datetime | None = None,
) -> bool:
    """Store a parsed batch raw and in the rollups; False when the batch id is known.

    Raises:
        TelemetryError: the bundle sections are not valid (nothing is stored).
    """
    parts = contributions(batch)  # validate everything before writing anything
    received = received_at or timezone.now()
    if settings.TELEMETRY_FOLD == "deferred":
        return _store_pending(device, batch, raw_body, received)
    try:
        with transaction.atomic():
            try:
                # First statement of the transaction, so a duplicate needs no savepoint:
                # the whole (empty) transaction is rolled back.
                _insert_raw(device, batch, raw_body, received, folded=True)
            except IntegrityError as exc:
                raise _KnownBatchError from exc
            hour = rollup_hour(batch.get("period_end"), received)
            apply(device, hour, parts, group_ids_for(device))
    except _KnownBatchError:
        return False
    return True


def _insert_raw(
    device: Device,
    batch: dict[str, Any],
    raw_body: dict[str, Any],
    received: datetime,
    *,
    folded: bool,
) -> None:
    """The raw row; its unique batch id is what makes a replay count once."""
    TelemetryBatch.objects.create(
        batch_id=batch["batch_id"],
        device=device,
        bundle=batch.get("bundle") or "",
        period_start=batch.get("period_start"),
        period_end=batch.get("period_end"),
        body=raw_body,
        received_at=received,
        folded=folded,
    )


def _store_pending(
    device: Device, batch: dict[str, Any], raw_body: dict[str, Any], received: datetime
) -> bool:
    """Deferred mode: the raw row only; fleet.telemetry.rollup_fold adds it to the rollups."""
    try:
        with transaction.atomic():
            _insert_raw(device, batch, raw_body, received, folded=False)
    except IntegrityError:
        return False
    return True


def apply(device: Device, hour: datetime, parts: list[Contribution], group_ids: list[int]) -> None:
    """Add contributions to the device-day and bundle-group-hour rows (caller's
    transaction); the lock order is the module docstring's."""
    first_in_hour = add_device_day(device, hour, parts)
    add_hourly(hour, shard_of(device), group_ids, [(parts, first_in_hour)])


def shard_of(device: Device) -> int:
    return uuid.UUID(str(device.pk)).int % HOURLY_SHARDS


def add_device_day(device: Device, hour: datetime, parts: list[Contribution]) -> dict[str, bool]:
    """Add to the device's day rows; returns, per bundle, whether this is the device's
    first report in that hour (it then counts once in the hourly `devices`)."""
    day: date = hour.date()
    bit = 1 << hour.hour
    first_in_hour: dict[str, bool] = {}
    for part in parts:
        row, _ = DeviceDay.objects.select_for_update().get_or_create(
            device=device, bundle=part.bundle, day=day
        )
        first_in_hour[part.bundle] = not row.hours_mask & bit
        row.hours_mask |= bit
        add_to_row(row, part)
        row.save()
    return first_in_hour


def add_hourly(
    hour: datetime,
    shard: int,
    group_ids: list[int],
    entries: list[tuple[list[Contribution], dict[str, bool]]],
) -> None:
    """Add batches of devices in the same groups (and shard) to their hourly rows: each
    row is locked, updated in memory for every entry and written once."""
    bundles = sorted({p.bundle for parts, _ in entries for p in parts})
    hourly = _lock_hour_rows(hour, shard, bundles, group_ids)
    for parts, first_in_hour in entries:
        for part in parts:
            for group_id in [None, *group_ids]:
                row_h = hourly[(part.bundle, group_id)]
                row_h.devices += 1 if first_in_hour[part.bundle] else 0
                add_to_row(row_h, part)
    # Plain per-row UPDATEs: Django's bulk_update builds CASE expressions costing ~40 ms
    # of CPU per batch here (measured), far more than the round trips it saves.
    for row_h in hourly.values():
        row_h.save(update_fields=HOURLY_FIELDS)


def _lock_hour_rows(
    hour: datetime, shard: int, bundles: list[str], group_ids: list[int]
) -> dict[tuple[str, int | None], BundleGroupHour]:
    """Lock (creating what is missing) the hourly rows of these bundles: fleet-wide
    first, then groups by id, bundle by bundle: the same order in every transaction."""
    wanted = {(b, g) for b in bundles for g in [None, *group_ids]}

    def fetch() -> dict[tuple[str, int | None], BundleGroupHour]:
        rows = (
            BundleGroupHour.objects.select_for_update()
            .filter(hour=hour, shard=shard, bundle__in=bundles)
            .filter(Q(group__isnull=True) | Q(group_id__in=group_ids))
            .order_by("bundle", F("group_id").asc(nulls_first=True))
        )
        return {(r.bundle, r.group_id): r for r in rows}

    found = fetch()
    missing = sorted(wanted - found.keys(), key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    for bundle, group_id in missing:
        try:
            with transaction.atomic():
                BundleGroupHour.objects.create(
                    bundle=bundle, group_id=group_id, hour=hour, shard=shard
                )
        except IntegrityError:
            pass  # another batch created it first; fetch() below locks it
    return fetch() if missing else found


def _merge_counts(a: list[int], b: list[int]) -> list[int]:
    if not a:
        return list(b)
    if not b:
        return list(a)
    return [x + y for x, y in zip(a, b, strict=True)]


def _capped_add(counts: dict[str, int], key: str, n: int, cap: int) -> None:
    if key not in counts and len(counts) >= cap:
        key = OTHER
    counts[key] = counts.get(key, 0) + n


def add_to_row(row: RollupCounters, part: Contribution) -> None:
    """Merge one contribution into a rollup row in memory (histograms element-wise)."""
    row.batches += 1
    row.requests += part.requests
    row.inferences += part.inferences
    row.low_confidence += part.low_confidence
    for kind, n in part.errors_by_kind.items():
        row.errors += n
        _capped_add(row.errors_by_kind, kind, n, MAX_ERROR_KINDS)
    for name, counts in part.histograms.items():
        attr = HISTOGRAM_FIELDS[name]
        setattr(row, attr, _merge_counts(getattr(row, attr), counts))
    row.golden_runs += part.golden_runs
    row.golden_failed += part.golden_failed
    if part.golden_agreement is not None:
        row.golden_reports += 1
        row.golden_agreement_sum += part.golden_agreement
        low = row.golden_min_agreement
        row.golden_min_agreement = (
            part.golden_agreement if low is None else min(low, part.golden_agreement)
        )
    for (predicted, actual), n in part.feedback.items():
        row.feedback_total += n
        row.feedback_correct += n if predicted == actual else 0
        if predicted not in row.feedback_confusion and len(row.feedback_confusion) >= MAX_LABELS:
            predicted = OTHER
        _capped_add(row.feedback_confusion.setdefault(predicted, {}), actual, n, MAX_LABELS)
