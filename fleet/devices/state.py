"""A device's desired state, and the fast answer to the fleet's most frequent request.

Every device polls `GET /api/device/v1/state` with the ETag of its last answer; almost
always nothing changed and the answer is a bodiless 304. `DeviceStateFastPath` answers
those polls with one SQL query, ahead of the session, CSRF, auth and routing layers, and
lets everything else through to the full view (it refreshes `last_seen_at` when due, as
the view's authentication does):

- no `If-None-Match`, or a changed state (the ETag differs): the view builds the body;
- an unknown or revoked credential: the view answers 401 with its usual error body;
- any database error: the view's error handling applies.

Both paths build the body with `state_body`, so their ETags cannot drift apart.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from tinyfleet_agent.protocol import DEVICE_API_PREFIX

from fleet.devices.push import announcement

STATE_PATH = f"{DEVICE_API_PREFIX}/state"


def last_seen_write_interval() -> int:
    # Polls must stay reads: refresh last_seen_at a few times per "online" window only.
    return max(10, settings.DEVICE_ONLINE_SECONDS // 4)


def state_body(
    device_id: str,
    bundle_id: str | None,
    release: int | None,
    assigned_at: datetime | None,
    fallback_url: str = "",
) -> dict[str, Any]:
    """The desired-state answer for one device (also what its ETag is computed from).

    `fallback` appears only while a group of the device has the low-confidence fallback
    on (fleet/devices/fallback.py), and `mqtt` only when wake-ups are configured, so devices
    without them keep their bodies and ETags."""
    body: dict[str, Any] = {
        "device_id": device_id,
        "poll_interval": settings.DEVICE_POLL_INTERVAL,
        "desired": {
            "bundle": bundle_id,
            "release": release,
            "assigned_at": assigned_at.isoformat() if assigned_at else None,
        },
        "revoked": False,
    }
    if fallback_url:
        body["fallback"] = {"url": fallback_url}
    mqtt = announcement(device_id)
    if mqtt is not None:
        body["mqtt"] = mqtt
    return body


def state_etag(body: dict[str, Any]) -> str:
    return '"' + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32] + '"'


@functools.cache
def _state_sql() -> str:
    from fleet.models import Assignment, Bundle, Device

    # At most one current assignment per device (a partial unique index), so the join
    # yields one row; the lookup is by the unique credential digest.
    # The table names come from model meta; the only value is bound.
    return (
        "SELECT d.id, d.revoked_at, d.last_seen_at, a.bundle_id, b.release, a.created_at, "  # noqa: S608
        "d.fallback_url "
        f"FROM {Device._meta.db_table} d "
        f"LEFT JOIN {Assignment._meta.db_table} a ON a.device_id = d.id AND a.ended_at IS NULL "
        f"LEFT JOIN {Bundle._meta.db_table} b ON b.id = a.bundle_id "
        "WHERE d.credential_digest = %s"
    )


def unchanged_state_etag(credential_digest: str) -> str | None:
    """The current ETag of the device holding this credential, or None when the fast
    path must not answer (unknown or revoked device). Refreshes `last_seen_at` when due,
    as the view's authentication would."""
    with connection.cursor() as cursor:
        cursor.execute(_state_sql(), [credential_digest])
        row = cursor.fetchone()
    if row is None:
        return None
    device_id, revoked_at, last_seen, bundle_id, release, assigned, fallback_url = row
    last_seen_at, assigned_at = _aware(last_seen), _aware(assigned)
    if revoked_at is not None:
        return None
    now = timezone.now()
    if last_seen_at is None or (now - last_seen_at).total_seconds() > last_seen_write_interval():
        _touch_last_seen(device_id, now)
    # SQLite stores UUIDs as 32 hex digits; the ETag uses the canonical form.
    canonical_id = str(uuid.UUID(str(device_id)))
    return state_etag(state_body(canonical_id, bundle_id, release, assigned_at, fallback_url))


def _touch_last_seen(device_id: Any, now: datetime) -> None:
    """What the view's auth does on a poll, without the ORM: one single-row UPDATE."""
    from fleet.models import Device

    Device.objects.filter(pk=device_id).update(last_seen_at=now)


def _aware(value: datetime | str | None) -> datetime | None:
    """Raw cursors skip the ORM's converters: SQLite returns text, PostgreSQL aware
    datetimes (the connection runs in UTC). Both end as the ORM would return them."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value


class DeviceStateFastPath:
    """Middleware, first in the stack: a 304 for an unchanged desired-state poll."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info == STATE_PATH and request.method == "GET":
            response = self._not_modified(request)
            if response is not None:
                return response
        return self.get_response(request)

    def _not_modified(self, request: HttpRequest) -> HttpResponse | None:
        from fleet.models.devices import DEVICE_CREDENTIAL_PREFIX, digest

        sent_etag = request.META.get("HTTP_IF_NONE_MATCH")
        auth = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = auth.partition(" ")
        if not sent_etag or scheme.lower() != "bearer":
            return None
        if not token.startswith(DEVICE_CREDENTIAL_PREFIX) or len(token) > 200:
            return None
        try:
            etag = unchanged_state_etag(digest(token))
        except DatabaseError:
            return None
        if etag is None or etag != sent_etag:
            return None
        response = HttpResponse(status=304)
        response["ETag"] = etag
        response["Cache-Control"] = "no-cache"
        return response
