"""`POST /api/device/v1/telemetry` in deferred mode, ahead of Django's middleware,
django-ninja and the ORM.

With `TINYFLEET_TELEMETRY_FOLD=deferred` a batch only needs to be validated and stored
raw (fleet/rollup_fold.py folds it later). The view spends most of its CPU around that
(session, CSRF and auth middleware, ninja's routing and rendering, the ORM building two
statements); this answers the same request with one prepared statement on PostgreSQL
(the device by its credential digest, its `last_seen_at` when due, and an `INSERT ... ON
CONFLICT (batch_id) DO NOTHING` whose empty result is the replay case). Under gunicorn it
runs in the WSGI wrapper (fleet/api/fastpath.py `DeviceFastPathApp`), before Django's handler.

Validation is the view's: `parse_batch` and `contributions` (fleet/telemetry/validation.py,
fleet/telemetry/rollups.py); checks added there apply to both paths. Anything else falls through
to the view, which answers it as before: no credential or an unknown/revoked one (401),
an oversized, invalid or non-JSON body (413/400), SQLite, `ingest` mode, or a database
error.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from fleet.devices import fastsql
from fleet.devices.state import credential_digest, last_seen_write_interval
from fleet.models.devices import Admission
from fleet.telemetry.validation import (
    MAX_TELEMETRY_BYTES,
    TelemetryError,
    bundles_named,
    parse_batch,
    stored_body,
)

# The bytes and type django-ninja renders for the view's answers.
ACCEPTED = b'{"accepted": true}'
DUPLICATE = b'{"duplicate": true}'
CONTENT_TYPE = "application/json; charset=utf-8"


@functools.cache
def _ingest_sql() -> str:
    from fleet.models import Assignment, Device, TelemetryBatch

    device, batches = Device._meta.db_table, TelemetryBatch._meta.db_table
    assignments = Assignment._meta.db_table
    # One statement, one round trip. Data-modifying CTEs always run once: the device's
    # last_seen_at is refreshed when due (as the view's auth does) and the batch is
    # inserted for a known, unrevoked, admitted device that was assigned every bundle the
    # batch names (the view's checks; when one fails, `ok` is false, nothing is stored and
    # the view answers 403/400 with its message). The per-device unique batch id makes a
    # replay (or the same batch racing itself) a no-op: `inserted` is NULL and the answer
    # is 200, as the view answers.
    return (
        f"WITH d AS (SELECT id, revoked_at IS NULL AND admission = %s AND NOT EXISTS ("  # noqa: S608
        f"SELECT 1 FROM unnest(%s::varchar[]) AS named(bundle_id) WHERE NOT EXISTS ("
        f"SELECT 1 FROM {assignments} a WHERE a.device_id = {device}.id "
        "AND a.bundle_id = named.bundle_id)) AS ok, revoked_at "
        f"FROM {device} WHERE credential_digest = %s), "
        f"seen AS (UPDATE {device} SET last_seen_at = %s WHERE id = (SELECT id FROM d) "
        "AND revoked_at IS NULL AND (last_seen_at IS NULL OR last_seen_at < %s) RETURNING 1), "
        f"ins AS (INSERT INTO {batches} "
        "(batch_id, device_id, bundle, period_start, period_end, body, received_at, folded) "
        "SELECT %s, d.id, %s, %s, %s, %s::jsonb, %s, false FROM d WHERE d.ok "
        "ON CONFLICT (device_id, batch_id) DO NOTHING RETURNING id) "
        "SELECT d.ok, (SELECT id FROM ins) FROM d"
    )


def _applies(meta: Mapping[str, Any]) -> bool:
    if settings.TELEMETRY_FOLD != "deferred" or connection.vendor != "postgresql":
        return False
    length = meta.get("CONTENT_LENGTH") or ""
    return length.isdigit() and 0 < int(length) <= MAX_TELEMETRY_BYTES


def wants(meta: Mapping[str, Any]) -> bool:
    """Whether `ingest` may answer this request (its body is then read in full)."""
    return credential_digest(meta) is not None and _applies(meta)


def ingest(meta: Mapping[str, Any], raw: bytes) -> tuple[int, bytes] | None:
    """Store one batch: (202 or 200 for a replay, JSON body), or None: the view answers
    (unknown or revoked device, invalid batch, database error)."""
    credential = credential_digest(meta)
    if credential is None:
        return None
    batch = _validated(raw)
    if batch is None:
        return None
    now = timezone.now()
    due = now - timedelta(seconds=last_seen_write_interval())
    try:
        params = [Admission.ACCEPTED, sorted(bundles_named(batch)), credential, now, due]
        row = fastsql.fetchone(_ingest_sql(), [*params, *_batch_params(batch, now)])
    except DatabaseError:
        return None
    if row is None or not row[0]:
        return None  # unknown, revoked, pending, or a bundle never assigned: the view says why
    if row[1] is None:
        return 200, DUPLICATE
    return 202, ACCEPTED  # committed (autocommit); the caller nudges the rollout engine


def _validated(raw: bytes) -> dict[str, Any] | None:
    from fleet.telemetry.rollups import contributions

    try:
        batch = parse_batch(raw)
        contributions(batch)  # what store_batch checks before writing anything
    except TelemetryError:
        return None  # the view answers 400 with the message
    return batch


def _batch_params(batch: dict[str, Any], now: Any) -> list[Any]:
    return [
        batch["batch_id"],
        batch.get("bundle") or "",
        batch.get("period_start"),
        batch.get("period_end"),
        json.dumps(stored_body(batch)),
        now,
    ]
