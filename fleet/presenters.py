"""JSON shapes of fleet objects, shared by the API and the pages."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from tinyfleet_agent.protocol import canonical_json

from fleet.agent_dist import wheel_url
from fleet.models import Device, Group
from fleet.security.device_metadata import trusted_roots


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


# Where the agent keeps its keys and installs when the operator runs the command as an
# ordinary user (the built-in default, /var/lib/tinyfleet-agent, needs root).
ENROLL_STATE_DIR = "~/.tinyfleet-agent"


def server_url(request: HttpRequest) -> str:
    """The URL devices should use: TINYFLEET_PUBLIC_URL, else the one the operator's
    browser (or API client) used to reach this server."""
    if settings.PUBLIC_URL:
        return str(settings.PUBLIC_URL).rstrip("/")
    return request.build_absolute_uri("/").rstrip("/")


def enroll_command(raw_token: str, server: str) -> str:
    """Install the agent from this server, enroll with the image root pinned, run."""
    # What `tinyfleet-agent enroll --root-fingerprint` compares: the image root's digest.
    pin = hashlib.sha256(canonical_json(trusted_roots()["image"])).hexdigest()
    state = f"--state-dir {ENROLL_STATE_DIR}"
    # PEP 508 "name[extras] @ URL": pip takes no extras after a bare wheel URL.
    return (
        f"pip install 'tinyfleet-agent[onnx,text] @ {wheel_url(server)}' && "
        f"tinyfleet-agent {state} enroll --server {server} --token {raw_token} "
        f"--root-fingerprint {pin} && "
        f"tinyfleet-agent {state} run"
    )
