"""What devices report: state-transition events and aggregated telemetry batches."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.models.devices import Device


class DeviceEvent(models.Model):
    """An update-state transition: downloading, verifying, installing, self-test, active,
    failed (with reason), rolled-back."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="events")
    bundle = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=32)
    reason = models.CharField(max_length=500, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    device_time = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-received_at", "-id"]


class TelemetryBatch(models.Model):
    """One aggregated batch as the device sent it (kept raw for a retention period)."""

    # Unique per device (a constraint below): one device cannot shadow another's batches.
    batch_id = models.UUIDField()
    # No index of its own: the (device, batch_id) unique constraint leads with device_id,
    # and one index fewer is one write fewer on every stored batch (the hot path).
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="telemetry", db_index=False
    )
    bundle = models.CharField(max_length=64, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    body = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    # False while a batch stored with TINYFLEET_TELEMETRY_FOLD=deferred waits for
    # fleet.telemetry.rollups.fold_pending to add it to the rollups.
    folded = models.BooleanField(default=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device", "batch_id"], name="telemetry_batch_per_device"
            )
        ]
        indexes = [
            # The fold's queue: small, since folded rows leave it.
            models.Index(fields=["id"], condition=Q(folded=False), name="telemetry_pending_fold"),
        ]
