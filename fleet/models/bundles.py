"""Bundles (a model version encrypted once and signed as an image target) and the
director's per-device assignments."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.models.devices import Device


def new_bundle_id() -> str:
    # 48 random bits: short enough to read aloud, unique in any realistic registry
    # (the primary key catches the astronomically unlikely clash).
    return f"b-{uuid.uuid4().hex[:12]}"


class BundleStatus(models.TextChoices):
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    FAILED = "failed"


class Bundle(models.Model):
    id = models.CharField(max_length=32, primary_key=True, default=new_bundle_id)
    version = models.ForeignKey(
        "compression.ModelVersion", on_delete=models.PROTECT, related_name="bundles"
    )
    # The record's model slug: release numbers are monotonic per slug, as devices see them.
    model = models.CharField(max_length=128)
    release = models.PositiveIntegerField()
    target_name = models.CharField(max_length=200)
    record = models.JSONField(null=True, blank=True)
    # Operator-set classifier `labels` / `confidence_threshold` for the signed record
    # (POST /api/v1/bundles); they win over the version's pipeline and its HF config.
    pipeline_overrides = models.JSONField(default=dict, blank=True)
    ciphertext_key = models.CharField(max_length=512, blank=True)
    # nonce || AES-256-GCM(content key) under the master key: needed to wrap the key for
    # devices assigned after publishing.
    content_key_sealed = models.BinaryField(null=True, blank=True)
    plaintext_size = models.BigIntegerField(null=True, blank=True)
    ciphertext_size = models.BigIntegerField(null=True, blank=True)
    ciphertext_sha256 = models.CharField(max_length=64, blank=True)
    status = models.CharField(
        max_length=16, choices=BundleStatus.choices, default=BundleStatus.PUBLISHING
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-release"]
        constraints = [
            # Publishing a version twice returns the first bundle; a failed attempt may
            # be retried with a new one.
            models.UniqueConstraint(
                fields=["version"],
                condition=~Q(status="failed"),
                name="bundle_one_live_per_version",
            ),
            models.UniqueConstraint(fields=["model", "release"], name="bundle_release_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.pk} ({self.model} release {self.release})"

    @property
    def is_published(self) -> bool:
        return self.status == BundleStatus.PUBLISHED


class Assignment(models.Model):
    """The bundle the director tells one device to run. Rows are history: the newest
    row without `ended_at` is the current assignment."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="assignments")
    bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, related_name="assignments")
    # HPKE enc || sealed content key, bound to (bundle, release, device id).
    wrapped_key = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["device"],
                condition=Q(ended_at__isnull=True),
                name="assignment_one_current_per_device",
            )
        ]

    def __str__(self) -> str:
        return f"{self.device_id} -> {self.bundle_id}"
