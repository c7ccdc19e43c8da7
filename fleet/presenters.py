"""JSON shapes of fleet objects, shared by the API and the pages."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from fleet.models import Device, Group


def group_json(group: Group) -> dict[str, Any]:
    return {
        "id": group.pk,
        "name": group.name,
        "selector": group.selector,
        "description": group.description,
        "devices": group.members().count(),
        "fallback_enabled": group.fallback_enabled,
        "fallback_url": group.fallback_url,
        "created_at": group.created_at,
    }


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": str(device.pk),
        "name": device.name,
        "status": device.status,
        "labels": device.labels,
        "facts": device.facts,
        "groups": [g.pk for g in Group.objects.all() if g.matches(device)],
        "active_bundle": device.state.get("active_bundle"),
        "last_seen_at": device.last_seen_at,
        "enrolled_at": device.enrolled_at,
        "state": device.state,
    }


def enroll_command(raw_token: str) -> str:
    return (
        "pip install 'tinyfleet-agent[onnx,text]' && "
        f"tinyfleet-agent enroll --server {settings.SITE_URL} --token {raw_token} && "
        "tinyfleet-agent run"
    )
