"""Rollouts: a bundle to a group in waves, gated on in-field evidence."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.models.bundles import Bundle
from fleet.models.devices import Group


class RolloutStatus(models.TextChoices):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


ACTIVE_ROLLOUT_STATUSES = (RolloutStatus.RUNNING.value, RolloutStatus.PAUSED.value)

DEFAULT_GATES: dict[str, Any] = {
    "max_install_failure_rate": 0.2,  # failed / (failed + installed)
    "min_golden_agreement": 0.95,  # on-device golden self-test agreement (None: off)
    "max_p95_latency_ratio": 1.5,  # vs the previous bundle on the same devices
    "max_accuracy_drop_points": 2.0,  # feedback accuracy vs the previous bundle
    "min_feedback_samples": 50,  # per side, before the accuracy test may fail
    "max_error_rate": 0.05,  # inference errors / requests (None: off)
    # Requests the wave must serve before the error rate may pass; 0 accepts a wave with
    # no traffic yet on its devices' telemetry and self-tests alone.
    "min_requests": 0,
    "min_latency_samples": 20,  # per side, before the latency comparison may pass
    "min_devices_reporting": 1,  # of the wave, before gates can pass
    "max_confidence_psi": None,  # off; e.g. 0.25: confidence drift vs compression time
    "min_confidence_samples": 200,  # in-field confidences before the PSI gate may fail
    "on_failure": "rollback",  # or "pause"
    # A wave whose gates still lack evidence this long after it started pauses (with the
    # missing evidence as its reason) instead of waiting forever or passing.
    "evidence_timeout_seconds": 1800,
}
DEFAULT_SOAK_SECONDS = 300


class Rollout(models.Model):
    bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, related_name="rollouts")
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="rollouts")
    waves = models.JSONField(default=list)  # percents, increasing, ending at 100
    soak_seconds = models.PositiveIntegerField(default=600)
    gates = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=RolloutStatus.choices, default=RolloutStatus.DRAFT
    )
    current_wave = models.PositiveSmallIntegerField(default=0)
    wave_started_at = models.DateTimeField(null=True, blank=True)
    # device id -> bundle id it ran before this rollout (None: nothing), for rollback.
    previous = models.JSONField(default=dict, blank=True)
    last_evaluation = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["group"],
                condition=Q(status__in=ACTIVE_ROLLOUT_STATUSES),
                name="rollout_one_active_per_group",
            )
        ]

    def __str__(self) -> str:
        return f"rollout {self.pk}: {self.bundle_id} to {self.group}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_ROLLOUT_STATUSES

    @property
    def wave_percent(self) -> int:
        return int(self.waves[min(self.current_wave, len(self.waves) - 1)])

    def gate(self, name: str) -> Any:
        return {**DEFAULT_GATES, **self.gates}.get(name)


class RolloutEvent(models.Model):
    """A transition with who/why and the numbers behind it."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=32)
    reason = models.TextField(blank=True)
    numbers = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]


class RolloutVariant(models.Model):
    """One bundle of a release. A device gets the first variant (lowest position) it can
    run; `Rollout.bundle` is always the position-0 variant, so single-bundle clients and
    rollouts created before variants existed keep working."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="variants")
    bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, related_name="rollout_variants")
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["rollout", "position"]
        constraints = [
            models.UniqueConstraint(fields=["rollout", "bundle"], name="rollout_variant_once"),
            models.UniqueConstraint(
                fields=["rollout", "position"], name="rollout_variant_position_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"rollout {self.rollout_id} variant {self.position}: {self.bundle_id}"
