"""Low-confidence fallback: a per-group setting delivered in each device's desired state.

When a classifier on a device answers under its bundle's confidence threshold, the agent
marks the answer `low_confidence`; only if an operator enabled the fallback for one of the
device's groups does the agent also send that input to the group's fallback URL (for
example a larger model on the server). Off by default; the URL must be https, or http to
a loopback address (the same rule the agent applies again before sending anything).

A device in several groups with the fallback on uses the group with the lowest id. The
URL in force is stored on the device row (`Device.fallback_url`) so the desired-state
fast path needs no extra query; it is recomputed whenever a group's setting, a device's
groups or its labels change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from tinyfleet_agent.protocol import FallbackUrlError, check_fallback_url

from accounts.models import audit
from fleet.models import Device, Group

__all__ = ["FallbackUrlError", "effective_fallback_url", "refresh_devices", "set_group_fallback"]


def effective_fallback_url(device: Device, groups: Iterable[Group] | None = None) -> str:
    """The fallback URL in force for `device` ("" when no group of it enabled one)."""
    candidates = groups if groups is not None else Group.objects.filter(fallback_enabled=True)
    for group in sorted(candidates, key=lambda g: g.pk):
        if group.fallback_enabled and group.fallback_url and group.matches(device):
            return group.fallback_url
    return ""


def refresh_devices(devices: Iterable[Device]) -> int:
    """Recompute `fallback_url` for `devices`; returns how many changed."""
    enabled = list(Group.objects.filter(fallback_enabled=True).order_by("pk"))
    changed = 0
    for device in devices:
        url = effective_fallback_url(device, enabled)
        if url != device.fallback_url:
            Device.objects.filter(pk=device.pk).update(fallback_url=url)
            device.fallback_url = url
            changed += 1
    return changed


def set_group_fallback(group: Group, *, enabled: bool, url: str, actor: Any) -> int:
    """Turn the fallback on (with its URL) or off for `group`, audit it, update members;
    returns how many devices' setting changed.

    Raises:
        FallbackUrlError: enabling without an acceptable URL (nothing is changed).
    """
    url = url.strip()
    if enabled or url:
        url = check_fallback_url(url)
    with transaction.atomic():
        before = {"enabled": group.fallback_enabled, "url": group.fallback_url}
        group.fallback_enabled, group.fallback_url = enabled, url
        group.save(update_fields=["fallback_enabled", "fallback_url"])
        changed = refresh_devices(group.members().select_for_update())
        audit(actor, "group.fallback", group, enabled=enabled, url=url, before=before)
    return changed
