"""Operator API for the fleet: groups, enrollment tokens, devices."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.utils import timezone
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from accounts.models import Role, audit
from accounts.permissions import require_role, signed_in_user
from fleet.devices.fallback import FallbackUrlError, refresh_devices, set_group_fallback
from fleet.models import Device, EnrollmentToken, Group
from fleet.models.devices import SelectorError, check_labels, parse_selector
from fleet.presenters import device_json, enroll_command, group_json, server_url
from fleet.rollouts import rollout_plan
from fleet.security import director

router = Router(tags=["fleet"])


class GroupIn(Schema):
    name: str
    selector: str = ""
    description: str = ""


class GroupOut(Schema):
    id: int
    name: str
    selector: str
    description: str
    devices: int
    fallback_enabled: bool
    fallback_url: str
    created_at: datetime


class GroupList(Schema):
    items: list[GroupOut]
    count: int


class EnrollmentTokenIn(Schema):
    group: int
    name: str = ""
    max_uses: int | None = None
    expires_in_hours: int | None = 24
    labels: dict[str, str] = {}


class EnrollmentTokenOut(Schema):
    id: int
    group: int
    token: str
    max_uses: int | None
    expires_at: datetime | None
    command: str


class DeviceOut(Schema):
    id: str
    name: str
    status: str
    labels: dict[str, str]
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


class FallbackIn(Schema):
    enabled: bool
    url: str = ""


class LabelsIn(Schema):
    labels: dict[str, str]


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
                created_by=signed_in_user(request),
            )
    except IntegrityError:
        return Status(409, {"error": f"a group named {name!r} already exists"})
    audit(request.user, "group.create", group, selector=group.selector)
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


@router.post("/enrollment-tokens", response={201: EnrollmentTokenOut, 400: dict, 403: dict})
def create_enrollment_token(request: HttpRequest, body: EnrollmentTokenIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    group = Group.objects.filter(pk=body.group).first()
    if group is None:
        raise HttpError(400, f"group {body.group} does not exist")
    if body.max_uses is not None and body.max_uses < 1:
        raise HttpError(400, "max_uses must be at least 1")
    if body.expires_in_hours is not None and not 0 < body.expires_in_hours <= 24 * 365:
        raise HttpError(400, "expires_in_hours must be between 1 and 8760")
    try:
        labels = check_labels(body.labels)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from exc
    ttl = timedelta(hours=body.expires_in_hours) if body.expires_in_hours else None
    token, raw = EnrollmentToken.issue(
        group, user=request.user, max_uses=body.max_uses, ttl=ttl, name=body.name, labels=labels
    )
    audit(request.user, "enrollment-token.create", token, group=group.name)
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


@router.get("/devices", response=DeviceList)
def list_devices(
    request: HttpRequest, group: int | None = None, status: str = "", label: str = ""
) -> dict[str, Any]:
    devices = list(Device.objects.prefetch_related("groups"))
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


@router.get("/devices/{device_id}", response=DeviceOut)
def get_device(request: HttpRequest, device_id: str) -> dict[str, Any]:
    device = _device(device_id)
    return {**device_json(device), "rollouts": rollout_plan.device_variants(device)}


def _device(device_id: str) -> Device:
    try:
        return get_object_or_404(Device, pk=device_id)
    except Exception as exc:  # a malformed UUID is simply not found
        raise HttpError(404, "not found") from exc


@router.put("/devices/{device_id}/labels", response={200: DeviceOut, 400: dict, 403: dict})
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


@router.post("/devices/{device_id}/revoke", response={200: DeviceOut, 403: dict})
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
    "/metrics", summary="Fleet overview, one bundle's hourly in-field series, or one device's days"
)
def metrics(
    request: HttpRequest,
    bundle: str = "",
    group: int | None = None,
    hours: int = 24,
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
