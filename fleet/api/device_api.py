"""The device API (`/api/device/v1/`): enrollment, desired state, events, telemetry.

Devices authenticate with the credential issued at enrollment (stored hashed); a revoked
device is refused on its next request. Responses are small and JSON, errors
{"error": "..."}.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import NinjaAPI, Router, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer
from tinyfleet_agent.protocol import EVENT_STATES

from core.api_errors import error_response
from fleet.devices.enrollment import EnrollmentError, enroll
from fleet.devices.push import announcement
from fleet.devices.state import last_seen_write_interval, state_body, state_etag
from fleet.models import Device, DeviceEvent
from fleet.models.devices import DEVICE_CREDENTIAL_PREFIX, digest
from fleet.rollout_tasks import nudge

MAX_EVENTS = 100
MAX_TELEMETRY_BYTES = 64 * 1024


class DeviceAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Device | None:
        if not token.startswith(DEVICE_CREDENTIAL_PREFIX) or len(token) > 200:
            return None
        device = (
            Device.objects.filter(credential_digest=digest(token))
            .only("pk", "revoked_at", "last_seen_at")
            .first()
        )
        if device is None or device.revoked_at is not None:
            return None
        now = timezone.now()
        if device.last_seen_at is None or (now - device.last_seen_at).total_seconds() > (
            last_seen_write_interval()
        ):
            Device.objects.filter(pk=device.pk).update(last_seen_at=now)
            device.last_seen_at = now
        return device


device_api = NinjaAPI(
    title="tinyfleet device API",
    version="device-1",
    urls_namespace="device-api-v1",
    auth=DeviceAuth(),
    docs_url=None,
)


def _error(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return error_response(device_api, request, message, status)


@device_api.exception_handler(HttpError)
def _on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _error(request, str(exc), exc.status_code)


@device_api.exception_handler(AuthenticationError)
def _on_unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(request, "unknown or revoked device credential", 401)


@device_api.exception_handler(ValidationError)
def _on_invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    where = "; ".join(
        ".".join(str(p) for p in e.get("loc", ()) if p != "body") + f": {e.get('msg')}"
        for e in exc.errors
    )
    return _error(request, f"invalid request: {where}", 400)


router = Router(tags=["device"])


class EnrollIn(Schema):
    token: str
    name: str
    labels: dict[str, str] = {}
    facts: dict[str, Any] = {}
    identity_public_key: str
    encryption_public_key: str
    proof: str


class EnrollOut(Schema):
    device_id: str
    credential: str
    poll_interval: int
    image_root: dict[str, Any]
    director_root: dict[str, Any]
    server_time: datetime
    mqtt: dict[str, str] | None = None  # {"url", "topic"} when MQTT wake-ups are on


@router.post("/enroll", auth=None, response={201: EnrollOut, 400: dict, 401: dict, 409: dict})
def enroll_device(request: HttpRequest, body: EnrollIn) -> Status[Any]:
    from fleet.security.device_metadata import trusted_roots

    try:
        device, credential = enroll(
            token=body.token,
            name=body.name,
            labels=body.labels,
            facts=body.facts,
            identity_public_key=body.identity_public_key,
            encryption_public_key=body.encryption_public_key,
            proof=body.proof,
        )
    except EnrollmentError as exc:
        return Status(exc.status, {"error": str(exc)})
    roots = trusted_roots()
    return Status(
        201,
        {
            "device_id": str(device.pk),
            "credential": credential,
            "poll_interval": settings.DEVICE_POLL_INTERVAL,
            "image_root": roots["image"],
            "director_root": roots["director"],
            "server_time": timezone.now(),
            "mqtt": announcement(device.pk),
        },
    )


class EventIn(Schema):
    state: str
    bundle: str = ""
    reason: str = ""
    detail: dict[str, Any] = {}
    at: datetime | None = None


class EventsIn(Schema):
    events: list[EventIn]


@router.post("/events", response={202: dict, 400: dict})
def report_events(request: HttpRequest, body: EventsIn) -> Status[Any]:
    device: Device = request.auth  # type: ignore[attr-defined]
    if not 0 < len(body.events) <= MAX_EVENTS:
        raise HttpError(400, f"send 1-{MAX_EVENTS} events at a time")
    for event in body.events:
        if event.state not in EVENT_STATES:
            raise HttpError(400, f"unknown state {event.state!r}")
        if len(json.dumps(event.detail)) > 4096:
            raise HttpError(400, "event detail is too large")
    DeviceEvent.objects.bulk_create(
        [
            DeviceEvent(
                device=device,
                bundle=e.bundle[:64],
                state=e.state,
                reason=e.reason[:500],
                detail=e.detail,
                device_time=e.at,
            )
            for e in body.events
        ]
    )
    for event in body.events:
        _remember_state(device, event)
    transaction.on_commit(nudge)
    return Status(202, {"accepted": len(body.events)})


def _remember_state(device: Device, event: EventIn) -> None:
    state = dict(device.state)
    state["update"] = {
        "state": event.state,
        "bundle": event.bundle,
        "reason": event.reason,
        "at": timezone.now().isoformat(),
    }
    # "rolled-back" names the bundle the device went back to (a local rollback too).
    if event.state in ("active", "rolled-back") and event.bundle:
        if state.get("active_bundle") and state["active_bundle"] != event.bundle:
            state["previous_bundle"] = state["active_bundle"]
        state["active_bundle"] = event.bundle
    if event.state in ("failed", "refused", "selftest-failed"):
        state["last_error"] = {
            "bundle": event.bundle,
            "reason": event.reason,
            "at": timezone.now().isoformat(),
        }
    Device.objects.filter(pk=device.pk).update(state=state)
    device.state = state


@router.post("/telemetry", response={202: dict, 200: dict, 400: dict, 413: dict})
def ingest_telemetry(request: HttpRequest) -> Status[Any]:
    """One aggregated batch; idempotent by its `batch_id` (replays are acknowledged)."""
    device: Device = request.auth  # type: ignore[attr-defined]
    if len(request.body) > MAX_TELEMETRY_BYTES:
        return Status(413, {"error": f"telemetry batch over {MAX_TELEMETRY_BYTES} bytes"})
    from fleet.telemetry.validation import TelemetryError, parse_batch

    try:
        batch = parse_batch(request.body)
    except TelemetryError as exc:
        return Status(400, {"error": str(exc)})
    from fleet.telemetry.rollups import store_batch

    try:
        stored = store_batch(device, batch, _jsonable(batch))
    except TelemetryError as exc:
        return Status(400, {"error": str(exc)})
    if not stored:
        # A replay (or the same batch racing itself): acknowledged, counted once.
        return Status(200, {"duplicate": True})
    transaction.on_commit(nudge)
    return Status(202, {"accepted": True})


def _jsonable(batch: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in batch.items() if k not in ("period_start", "period_end")}
    clean["batch_id"] = str(batch["batch_id"])
    return clean


class StateOut(Schema):
    device_id: str
    poll_interval: int
    desired: dict[str, Any]
    revoked: bool
    # {"url": ...} only while a group of the device has the low-confidence fallback on.
    fallback: dict[str, str] | None = None
    mqtt: dict[str, str] | None = None  # {"url", "topic"} when MQTT wake-ups are on


@router.get("/state", response={200: StateOut, 304: None})
def desired_state(request: HttpRequest) -> HttpResponse:
    """What the device should run. Answered from the database alone (no broker), with an
    ETag so unchanged polls cost a 304 (most of those are answered before this view, by
    fleet.devices.state.DeviceStateFastPath)."""
    from fleet.models import Assignment

    device: Device = request.auth  # type: ignore[attr-defined]
    # Only the three columns the answer needs: this is the hottest path of the fleet.
    current = (
        Assignment.objects.filter(device=device, ended_at__isnull=True)
        .order_by("-created_at", "-id")
        .values("bundle_id", "bundle__release", "created_at")
        .first()
    )
    body = state_body(
        str(device.pk),
        current["bundle_id"] if current else None,
        current["bundle__release"] if current else None,
        current["created_at"] if current else None,
        device.fallback_url,
    )
    etag = state_etag(body)
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    else:
        response = device_api.create_response(request, body, status=200)
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"
    return response


def _mount() -> None:
    from fleet.api.device_security_api import router as security_router

    device_api.add_router("", router)
    device_api.add_router("", security_router)


_mount()
