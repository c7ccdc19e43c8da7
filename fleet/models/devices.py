"""Devices, groups (label selectors or explicit members) and enrollment tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

DEVICE_CREDENTIAL_PREFIX = "tfd_"
ENROLLMENT_TOKEN_PREFIX = "tfe_"  # noqa: S105 - a public marker, not a secret
LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,62}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9._:/-]{0,128}$")


def digest(raw: str) -> str:
    # Credentials carry 256 random bits: a fast hash is safe and keeps lookups cheap.
    return hashlib.sha256(raw.encode()).hexdigest()


class SelectorError(ValueError):
    """A label selector that cannot be parsed."""


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """`site=plant-3,arch!=x86_64` -> [("site", "=", "plant-3"), ("arch", "!=", "x86_64")].

    Raises:
        SelectorError: a term is not `key=value` or `key!=value`, or a name is invalid.
    """
    terms = []
    for raw in filter(None, (t.strip() for t in (text or "").split(","))):
        match = re.fullmatch(r"([^=!\s]+)\s*(!=|=)\s*(\S*)", raw)
        if not match:
            raise SelectorError(f"selector term {raw!r} must look like key=value or key!=value")
        key, op, value = match.groups()
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise SelectorError(f"selector term {raw!r} has an invalid label key or value")
        terms.append((key, op, value))
    return terms


def selector_matches(terms: list[tuple[str, str, str]], labels: dict[str, str]) -> bool:
    for key, op, value in terms:
        equal = labels.get(key) == value
        if (op == "=" and not equal) or (op == "!=" and equal):
            return False
    return True


def check_labels(labels: Any) -> dict[str, str]:
    """Raises ValueError unless labels is a small {key: value} map of valid names."""
    if not isinstance(labels, dict) or len(labels) > 64:
        raise ValueError("labels must be an object with at most 64 entries")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} is invalid (lowercase letters, digits, ._/-)")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise ValueError(f"label value {value!r} for {key!r} is invalid")
    return dict(labels)


class Group(models.Model):
    name = models.CharField(max_length=100, unique=True)
    selector = models.CharField(max_length=500, blank=True)
    description = models.TextField(blank=True)
    # Low-confidence fallback (fleet/devices/fallback.py): off unless an operator enables it.
    fallback_enabled = models.BooleanField(default=False)
    fallback_url = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def matches(self, device: Device) -> bool:
        if device.groups.filter(pk=self.pk).exists():
            return True
        terms = parse_selector(self.selector)
        return bool(terms) and selector_matches(terms, device.labels)

    def members(self) -> models.QuerySet[Device]:
        """Explicit members plus every active device the selector matches."""
        terms = parse_selector(self.selector)
        ids = set(self.explicit_devices.values_list("pk", flat=True))
        if terms:
            for device in Device.objects.filter(revoked_at__isnull=True).only("pk", "labels"):
                if selector_matches(terms, device.labels):
                    ids.add(device.pk)
        return Device.objects.filter(pk__in=ids)


class EnrollmentToken(models.Model):
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="enrollment_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    max_uses = models.PositiveIntegerField(null=True, blank=True)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    @classmethod
    def issue(
        cls,
        group: Group,
        *,
        user: Any = None,
        max_uses: int | None = None,
        ttl: timedelta | None = None,
        name: str = "",
        labels: dict[str, str] | None = None,
    ) -> tuple[EnrollmentToken, str]:
        raw = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            group=group,
            name=name,
            prefix=raw[:10],
            digest=digest(raw),
            max_uses=max_uses,
            expires_at=timezone.now() + ttl if ttl else None,
            created_by=user,
            labels=labels or {},
        )
        return token, raw

    def problem(self) -> str | None:
        """Why this token cannot enroll a device now, or None."""
        if self.revoked_at is not None:
            return "enrollment token was revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "enrollment token has expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "enrollment token has been used up"
        return None


class DeviceStatus(models.TextChoices):
    ONLINE = "online"
    OFFLINE = "offline"
    STALE = "stale"
    REVOKED = "revoked"


class Device(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    labels = models.JSONField(default=dict, blank=True)
    facts = models.JSONField(default=dict, blank=True)
    identity_public_key = models.CharField(max_length=64, unique=True)  # Ed25519, hex
    encryption_public_key = models.CharField(max_length=64)  # X25519, hex
    credential_digest = models.CharField(max_length=64, unique=True)
    groups = models.ManyToManyField(Group, blank=True, related_name="explicit_devices")
    enrolled_with = models.ForeignKey(
        EnrollmentToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="devices"
    )
    enrolled_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    state = models.JSONField(default=dict, blank=True)  # slots, active bundle, last errors
    # The fallback URL in force for this device ("" = off), kept here so the one-query
    # desired-state fast path (fleet/devices/state.py) can include it; see
    # fleet/devices/fallback.py.
    fallback_url = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return DeviceStatus.REVOKED
        if self.last_seen_at is None:
            return DeviceStatus.OFFLINE
        age = (timezone.now() - self.last_seen_at).total_seconds()
        if age <= settings.DEVICE_ONLINE_SECONDS:
            return DeviceStatus.ONLINE
        if age <= settings.DEVICE_STALE_SECONDS:
            return DeviceStatus.OFFLINE
        return DeviceStatus.STALE
