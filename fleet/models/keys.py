"""Signing keys and TUF metadata of the image repository and the director.

Private keys are stored only sealed under the master key (AES-256-GCM, see
`fleet.security.masterkey`); a key whose private half left the database (an exported
root key) is `offline` and still trusted. Metadata rows hold the exact bytes that were
signed and are served: nothing re-serialises them on the way to a device.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Repo(models.TextChoices):
    IMAGE = "image", "Image repository"
    DIRECTOR = "director", "Director"


class KeyRole(models.TextChoices):
    ROOT = "root"
    TARGETS = "targets"
    SNAPSHOT = "snapshot"
    TIMESTAMP = "timestamp"


class KeyStatus(models.TextChoices):
    ACTIVE = "active"  # trusted by the current root, private key sealed in the database
    OFFLINE = "offline"  # trusted, private key exported (root keys kept off the server)
    RETIRED = "retired"  # rotated out; no longer in the current root
    REVOKED = "revoked"  # removed from the root because it may be compromised


TRUSTED_STATUSES = (KeyStatus.ACTIVE, KeyStatus.OFFLINE)


class TufRepository(models.Model):
    """One row per repository: the lock every metadata change takes first.

    Serialising writers on this row keeps versions gap-free and lets the snapshot
    always name the targets version that was really stored.
    """

    name = models.CharField(max_length=16, choices=Repo.choices, primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class SigningKey(models.Model):
    repo = models.CharField(max_length=16, choices=Repo.choices)
    role = models.CharField(max_length=16, choices=KeyRole.choices)
    keyid = models.CharField(max_length=64, unique=True)
    scheme = models.CharField(max_length=32, default="ed25519")
    public_key = models.CharField(max_length=64)  # raw Ed25519 public key, hex
    # nonce || AES-256-GCM(raw private key), AAD bound to the keyid; NULL when offline.
    private_key_sealed = models.BinaryField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=KeyStatus.choices, default=KeyStatus.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["repo", "role", "created_at", "keyid"]

    def __str__(self) -> str:
        return f"{self.repo}/{self.role} {self.keyid[:12]} ({self.status})"

    @property
    def is_trusted(self) -> bool:
        return self.status in TRUSTED_STATUSES

    @property
    def is_online(self) -> bool:
        return self.private_key_sealed is not None


class TufMetadata(models.Model):
    """One signed metadata file, byte for byte as served."""

    repo = models.CharField(max_length=16, choices=Repo.choices)
    role = models.CharField(max_length=16, choices=KeyRole.choices)
    version = models.PositiveIntegerField()
    # Director targets are per device; every other role has no device.
    device = models.ForeignKey(
        "fleet.Device", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    assignment = models.ForeignKey(
        "fleet.Assignment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    data = models.BinaryField()
    expires = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["repo", "role", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["repo", "role", "version"],
                condition=Q(device__isnull=True),
                name="tuf_metadata_version_unique",
            ),
            models.UniqueConstraint(
                fields=["repo", "role", "device", "version"],
                condition=Q(device__isnull=False),
                name="tuf_device_metadata_version_unique",
            ),
        ]
        indexes = [models.Index(fields=["repo", "role", "device", "-version"])]

    def __str__(self) -> str:
        who = f" for {self.device_id}" if self.device_id else ""
        return f"{self.repo} {self.version}.{self.role}.json{who}"

    @property
    def size(self) -> int:
        return len(self.data)
