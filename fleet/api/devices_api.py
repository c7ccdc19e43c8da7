"""Operator API for the fleet: groups, enrollment tokens, devices."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Field, Path, Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import StringConstraints

from accounts.models import Role, audit
from accounts.permissions import require_role, signed_in_user
from accounts.validation import MAX_ID
from fleet.devices import enrollment
from fleet.devices.fallback import FallbackUrlError, refresh_devices, set_group_fallback
from fleet.models import Device, EnrollmentToken, Group
from fleet.models.devices import (
    LABEL_KEY,
    LABEL_VALUE,
    Admission,
    SelectorError,
    check_labels,
    parse_selector,
)
from fleet.presenters import (
    device_json,
    enroll_command,
    enrollment_token_json,
    group_json,
    server_url,
)
from fleet.rollout_tasks import nudge
from fleet.rollouts import rollout_plan
from fleet.security import director

router = Router(tags=["fleet"])

# The label grammar of fleet.models.devices.check_labels, in the schema too, so clients
# (and generated ones) know it; check_labels still runs on every write.
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY.pattern)]
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE.pattern)]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=64, json_schema_extra={"additionalProperties": False}),
]


class GroupIn(Schema):
    name: str
    selector: str = ""
    description: str = ""
    require_approval: bool = False


class GroupOut(Schema):
    id: int
    name: str
    selector: str
    description: str
    devices: int
    fallback_enabled: bool
    fallback_url: str
    require_approval: bool
    created_at: datetime


class GroupList(Schema):
    items: list[GroupOut]
    count: int


class EnrollmentTokenIn(Schema):
    group: int = Field(..., ge=1, le=MAX_ID)
    name: str = Field("", max_length=100)
    # Single-use unless asked otherwise; every token expires (at most the configured
    # TINYFLEET_ENROLLMENT_TOKEN_MAX_HOURS, checked below).
    max_uses: int = Field(1, ge=1, le=100_000)
    expires_in_hours: int = Field(24, ge=1, le=settings.ENROLLMENT_TOKEN_MAX_HOURS)
    labels: Labels = {}


class EnrollmentTokenOut(Schema):
    id: int
    group: int
    token: str
    max_uses: int | None
    expires_at: datetime | None
    command: str


class EnrollmentTokenInfo(Schema):
    id: int
    group: int
    group_name: str
    name: str
    prefix: str
    labels: dict[str, str]
    max_uses: int | None
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime
    created_by: str | None
    status: str  # active, revoked, expired, used-up


class EnrollmentTokenList(Schema):
    items: list[EnrollmentTokenInfo]
    count: int


class DeviceOut(Schema):
    id: str
    name: str
    status: str
    admission: str  # accepted, pending (waits for an operator), rejected
    labels: dict[str, str]  # operator-set: the only labels group selectors use
    reported_labels: dict[str, str]  # what the device asked for at enrollment
    facts: dict[str, Any]
    groups: list[int]
    active_bundle: str | None
    last_seen_at: datetime | None
    enrolled_at: datetime
    state: dict[str, Any]
    # Detail only: per active rollout over its groups, the variant it gets or
    # "no compatible variant" with the reason.
    rollouts: list[dict[str, Any]] = []


class DeviceList(Schema):
    items: list[DeviceOut]
    count: int


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


class FallbackIn(Schema):
    enabled: bool
    url: str = ""


class LabelsIn(Schema):
    labels: Labels


@router.post("/groups", response={201: GroupOut, 409: dict, 400: dict, 403: dict})
def create_group(request: HttpRequest, body: GroupIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    name = body.name.strip()
    if not name or len(name) > 100:
        raise HttpError(400, "name must be 1-100 characters")
    try:
        parse_selector(body.selector)
    except SelectorError as exc:
        raise HttpError(400, str(exc)) from exc
    try:
        with transaction.atomic():
            group = Group.objects.create(
                name=name,
                selector=body.selector.strip(),
                description=body.description,
                require_approval=body.require_approval,
                created_by=signed_in_user(request),
            )
    except IntegrityError:
        return Status(409, {"error": f"a group named {name!r} already exists"})
    audit(
        request.user,
        "group.create",
        group,
        selector=group.selector,
        require_approval=group.require_approval,
    )
    return Status(201, group_json(group))


@router.get("/groups", response=GroupList)
def list_groups(request: HttpRequest) -> dict[str, Any]:
    groups = list(Group.objects.all())
    return {"items": [group_json(g) for g in groups], "count": len(groups)}


@router.put("/groups/{group_id}/fallback", response={200: GroupOut, 400: dict, 403: dict})
def set_fallback(request: HttpRequest, group_id: int, body: FallbackIn) -> Status[Any]:
    """Turn the low-confidence fallback on (https or loopback http URL) or off for a group."""
    require_role(request, Role.OPERATOR)
    group = get_object_or_404(Group, pk=group_id)
    try:
        set_group_fallback(group, enabled=body.enabled, url=body.url, actor=request.user)
    except FallbackUrlError as exc:
        raise HttpError(400, str(exc)) from exc
    return Status(200, group_json(group))


@router.post(
    "/enrollment-tokens", response={201: EnrollmentTokenOut, 400: dict, 403: dict, 404: dict}
)
def create_enrollment_token(request: HttpRequest, body: EnrollmentTokenIn) -> Status[Any]:
    """A new token for `group`: single-use unless `max_uses` says otherwise, and it always
    expires (`expires_in_hours`, at most the server's TINYFLEET_ENROLLMENT_TOKEN_MAX_HOURS)."""
    require_role(request, Role.OPERATOR)
    group = Group.objects.filter(pk=body.group).first()
    if group is None:
        raise HttpError(404, f"group {body.group} does not exist")
    limit = settings.ENROLLMENT_TOKEN_MAX_HOURS
    if body.expires_in_hours > limit:
        raise HttpError(400, f"expires_in_hours must be between 1 and {limit}")
    try:
        labels = check_labels(body.labels)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    token, raw = EnrollmentToken.issue(
        group,
        user=request.user,
        max_uses=body.max_uses,
        ttl=timedelta(hours=body.expires_in_hours),
        name=body.name,
        labels=labels,
    )
    audit(
        request.user,
        "enrollment-token.create",
        token,
        group=group.name,
        prefix=token.prefix,
        max_uses=token.max_uses,
        expires_at=token.expires_at.isoformat() if token.expires_at else None,
    )
    return Status(
        201,
        {
            "id": token.pk,
            "group": group.pk,
            "token": raw,
            "max_uses": token.max_uses,
            "expires_at": token.expires_at,
            "command": enroll_command(raw, server_url(request)),
        },
    )


@router.get("/enrollment-tokens", response={200: EnrollmentTokenList, 400: dict})
def list_enrollment_tokens(
    request: HttpRequest, group: int | None = Query(None, ge=1, le=MAX_ID)
) -> dict[str, Any]:
    """Tokens with their uses, expiry and status (never the secret itself)."""
    tokens = EnrollmentToken.objects.select_related("group", "created_by")
    if group is not None:
        tokens = tokens.filter(group_id=group)
    items = [enrollment_token_json(t) for t in tokens[:500]]
    return {"items": items, "count": len(items)}


@router.post(
    "/enrollment-tokens/{token_id}/revoke",
    response={200: EnrollmentTokenInfo, 403: dict, 404: dict},
)
def revoke_enrollment_token(
    request: HttpRequest, token_id: int = Path(..., ge=1, le=MAX_ID)
) -> Status[Any]:
    """Stop a token enrolling more devices (devices it enrolled are not affected)."""
    require_role(request, Role.OPERATOR)
    token = get_object_or_404(EnrollmentToken.objects.select_related("group"), pk=token_id)
    if token.revoke():
        audit(request.user, "enrollment-token.revoke", token, group=token.group.name)
    return Status(200, enrollment_token_json(token))


@router.get("/devices", response={200: DeviceList, 400: dict, 404: dict})
def list_devices(
    request: HttpRequest,
    group: int | None = Query(None, ge=1, le=MAX_ID),
    status: str = "",
    label: str = "",
    admission: Admission | None = None,
) -> dict[str, Any]:
    devices = list(Device.objects.prefetch_related("groups"))
    if admission is not None:
        devices = [d for d in devices if d.admission == admission]
    if group is not None:
        member_ids = set(get_object_or_404(Group, pk=group).members().values_list("pk", flat=True))
        devices = [d for d in devices if d.pk in member_ids]
    if status:
        devices = [d for d in devices if d.status == status]
    if label:
        try:
            terms = parse_selector(label)
        except SelectorError as exc:
            raise HttpError(400, str(exc)) from exc
        from fleet.models.devices import selector_matches

        devices = [d for d in devices if selector_matches(terms, d.labels)]
    return {"items": [device_json(d) for d in devices], "count": len(devices)}


@router.get("/devices/{device_id}", response={200: DeviceOut, 404: dict})
def get_device(request: HttpRequest, device_id: str) -> dict[str, Any]:
    device = _device(device_id)
    return {**device_json(device), "rollouts": rollout_plan.device_variants(device)}


def _device(device_id: str) -> Device:
    try:
        return get_object_or_404(Device, pk=device_id)
    except Exception as exc:  # a malformed UUID is simply not found
        raise HttpError(404, "not found") from exc


@router.put(
    "/devices/{device_id}/labels", response={200: DeviceOut, 400: dict, 403: dict, 404: dict}
)
def relabel(request: HttpRequest, device_id: str, body: LabelsIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    device = _device(device_id)
    try:
        device.labels = check_labels(body.labels)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    device.save(update_fields=["labels"])
    refresh_devices([device])  # selector groups may now match it, or no longer
    audit(request.user, "device.relabel", device, labels=device.labels)
    return Status(200, device_json(device))


@router.post(
    "/devices/{device_id}/admission/{decision}",
    response={200: DeviceOut, 403: dict, 404: dict, 409: dict},
)
def decide_admission(request: HttpRequest, device_id: str, decision: Decision) -> Status[Any]:
    """Accept a pending device (it joins its groups and rollouts) or reject it (its
    credential stops working at once)."""
    require_role(request, Role.OPERATOR)
    device = _device(device_id)
    try:
        if decision == Decision.ACCEPT:
            enrollment.accept(device, request.user)
            transaction.on_commit(nudge)  # a running rollout of its group may assign it
        else:
            enrollment.reject(device, request.user)
    except enrollment.AdmissionError as exc:
        return Status(409, {"error": str(exc)})
    return Status(200, device_json(device))


@router.post("/devices/{device_id}/revoke", response={200: DeviceOut, 403: dict, 404: dict})
def revoke(request: HttpRequest, device_id: str) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    device = _device(device_id)
    if device.revoked_at is None:
        device.revoked_at = timezone.now()
        device.save(update_fields=["revoked_at"])
        director.unassign(device)  # no wrapped keys for it any more, and tidy history
        audit(request.user, "device.revoke", device)
    return Status(200, device_json(device))


@router.get(
    "/metrics",
    response={200: dict, 400: dict, 404: dict},
    summary="Fleet overview, one bundle's hourly in-field series, or one device's days",
)
def metrics(
    request: HttpRequest,
    bundle: str = "",
    group: int | None = Query(None, ge=1, le=MAX_ID),
    hours: int = Query(24, ge=1, le=24 * 30),
    device: str = "",
) -> dict[str, Any]:
    """Without parameters: the fleet overview. With `bundle`: hourly series (fleet-wide or
    `group`'s), the per-group breakdown and confidence drift (PSI) over the last `hours`.
    With `device`: that device's daily numbers per bundle over the last `hours`."""
    from fleet.telemetry import monitoring

    if not 1 <= hours <= 24 * 30:
        raise HttpError(400, "hours must be between 1 and 720")
    if device:
        days = max(1, -(-hours // 24))
        return {"device": device, "days": monitoring.device_series(_device(device), days)}
    if not bundle:
        return monitoring.overview()
    chosen = get_object_or_404(Group, pk=group) if group is not None else None
    return {
        "bundle": bundle,
        "group": group,
        "hours": hours,
        "series": monitoring.bundle_series(bundle, hours, chosen),
        "groups": monitoring.group_breakdown(bundle, hours),
        "drift": monitoring.drift_summary(bundle, hours),
    }
