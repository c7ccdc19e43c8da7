"""Channels, rules, alerts and the delivery log."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.security import masterkey

_SECRET_PURPOSE = "alert-webhook-secret"  # noqa: S105 (an HKDF label, not a secret)


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook", "Webhook (signed JSON)"
    EMAIL = "email", "E-mail"


class Channel(models.Model):
    """Where alerts go. A webhook's shared secret must be usable for signing, so it is
    sealed under the master key (bound to this row), never stored in clear."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    url = models.URLField(max_length=500, blank=True)
    secret_sealed = models.BinaryField(null=True, blank=True, editable=False)
    recipients = models.TextField(blank=True)  # e-mail: comma-separated addresses
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.name}"

    def _binding(self) -> str:
        return f"alert-channel:{self.pk}"

    def new_secret(self) -> str:
        """Generate, seal and save a new shared secret; returns it (shown once)."""
        raw = "whsec_" + secrets.token_urlsafe(32)
        self.secret_sealed = masterkey.seal(
            raw.encode(), purpose=_SECRET_PURPOSE, bound_to=self._binding()
        )
        self.save(update_fields=["secret_sealed"])
        return raw

    def secret(self) -> str:
        """The shared secret, unsealed for signing.

        Raises:
            MasterKeyError: the sealed secret does not open (master key changed).
        """
        if not self.secret_sealed:
            return ""
        raw = masterkey.unseal(
            bytes(self.secret_sealed), purpose=_SECRET_PURPOSE, bound_to=self._binding()
        )
        return raw.decode()

    def recipient_list(self) -> list[str]:
        return [r.strip() for r in self.recipients.split(",") if r.strip()]

    @property
    def target(self) -> str:
        return self.url if self.kind == ChannelKind.WEBHOOK else ", ".join(self.recipient_list())


class RuleKind(models.TextChoices):
    ROLLOUT_PAUSED = "rollout_paused", "Rollout paused"
    ROLLOUT_ROLLED_BACK = "rollout_rolled_back", "Rollout rolled back"
    GATE_FAILING = "gate_failing", "Rollout gate failing"
    DEVICE_STALE = "device_stale", "Device stale"
    SELFTEST_FAILED = "selftest_failed", "Golden self-test failed"
    DRIFT_ABOVE = "drift_above", "Confidence drift (PSI) above"
    OUTBOX_DROPPING = "outbox_dropping", "Device outbox dropping telemetry"
    MEMORY_ABOVE = "memory_above", "Agent memory above (MB)"
    TEMPERATURE_ABOVE = "temperature_above", "CPU temperature above (°C)"
    DISK_BELOW = "disk_below", "Free disk below (MB)"
    BACKLOG_ABOVE = "backlog_above", "Outbox backlog above (batches)"


# What each kind's threshold means (None: the rule has no threshold) and its default.
THRESHOLDS: dict[str, tuple[str, float] | None] = {
    RuleKind.ROLLOUT_PAUSED: None,
    RuleKind.ROLLOUT_ROLLED_BACK: None,
    RuleKind.GATE_FAILING: None,
    RuleKind.DEVICE_STALE: ("minutes without contact", 24 * 60.0),
    RuleKind.SELFTEST_FAILED: None,
    RuleKind.DRIFT_ABOVE: ("PSI", 0.25),
    RuleKind.OUTBOX_DROPPING: None,
    RuleKind.MEMORY_ABOVE: ("MB resident", 1024.0),
    RuleKind.TEMPERATURE_ABOVE: ("°C", 80.0),
    RuleKind.DISK_BELOW: ("MB free", 500.0),
    RuleKind.BACKLOG_ABOVE: ("batches waiting", 100.0),
}
SEVERITY = {
    RuleKind.ROLLOUT_ROLLED_BACK: "critical",
    RuleKind.SELFTEST_FAILED: "critical",
    RuleKind.DISK_BELOW: "critical",
}


class Rule(models.Model):
    kind = models.CharField(max_length=32, choices=RuleKind.choices, unique=True)
    enabled = models.BooleanField(default=True)
    threshold = models.FloatField(null=True, blank=True)
    # Empty: every enabled channel.
    channels = models.ManyToManyField(Channel, blank=True, related_name="rules")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.get_kind_display()

    @property
    def severity(self) -> str:
        return SEVERITY.get(self.kind, "warning")  # type: ignore[call-overload]

    @property
    def threshold_unit(self) -> str:
        spec = THRESHOLDS.get(self.kind)
        return spec[0] if spec else ""

    def limit(self) -> float | None:
        spec = THRESHOLDS.get(self.kind)
        if spec is None:
            return None
        return self.threshold if self.threshold is not None else spec[1]

    def targets(self) -> list[Channel]:
        chosen = list(self.channels.filter(enabled=True))
        return chosen or list(Channel.objects.filter(enabled=True))


class Alert(models.Model):
    """One condition found by a rule; open until the condition is gone."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    key = models.CharField(max_length=200)  # what it is about, e.g. "rollout:12"
    subject = models.CharField(max_length=200)
    message = models.TextField()
    severity = models.CharField(max_length=16, default="warning")
    detail = models.JSONField(default=dict, blank=True)
    link = models.CharField(max_length=300, blank=True)
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "key"],
                condition=Q(resolved_at__isnull=True),
                name="alert_open_once",
            )
        ]

    def __str__(self) -> str:
        return self.subject

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"


class Delivery(models.Model):
    """One message to one channel, with every attempt's outcome (the delivery log)."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="deliveries")
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.CharField(max_length=32)  # alert.opened, alert.resolved, test
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    response_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    log = models.JSONField(default=list, blank=True)  # [{"at", "code", "error"}] per attempt
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
