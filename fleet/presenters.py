"""JSON shapes of fleet objects, shared by the API and the pages."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from fleet.models import Device, EnrollmentToken, Group
from fleet.models.devices import max_token_lifetime


def group_json(group: Group) -> dict[str, Any]:
    return {
        "id": group.pk,
        "name": group.name,
        "selector": group.selector,
        "description": group.description,
        "devices": group.members().count(),
        "fallback_enabled": group.fallback_enabled,
        "fallback_url": group.fallback_url,
        "require_approval": group.require_approval,
        "created_at": group.created_at,
    }


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": str(device.pk),
        "name": device.name,
        "status": device.status,
        "admission": device.admission,
        "labels": device.labels,
        "reported_labels": device.reported_labels,
        "facts": device.facts,
        "groups": [g.pk for g in Group.objects.all() if g.matches(device)],
        "active_bundle": device.state.get("active_bundle"),
        "last_seen_at": device.last_seen_at,
        "enrolled_at": device.enrolled_at,
        "state": device.state,
    }


def enrollment_token_json(token: EnrollmentToken) -> dict[str, Any]:
    """A token as listed (never the secret: only its first characters)."""
    return {
        "id": token.pk,
        "group": token.group_id,
        "group_name": token.group.name,
        "name": token.name,
        "prefix": token.prefix,
        "labels": token.labels,
        "max_uses": token.max_uses,
        "uses": token.uses,
        "expires_at": token.expires_at or token.created_at + max_token_lifetime(),
        "revoked_at": token.revoked_at,
        "created_at": token.created_at,
        "created_by": token.created_by.get_username() if token.created_by else None,
        "status": token.status,
    }


def enroll_command(raw_token: str) -> str:
    return (
        "pip install 'tinyfleet-agent[onnx,text]' && "
        f"tinyfleet-agent enroll --server {settings.SITE_URL} --token {raw_token} && "
        "tinyfleet-agent run"
    )
