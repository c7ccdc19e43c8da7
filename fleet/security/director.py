"""The director: which bundle each device must run, as per-device signed metadata.

A device's director targets metadata names exactly one target, copied from the image
repository's target for the bundle (same path, length, hashes and custom record), plus
the device id and the bundle's content key wrapped to the device's X25519 key. It is
signed by the director's online targets key and regenerated only when the assignment
changes, the key rotates, or it nears expiry. Rollouts call `assign` / `unassign`.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone
from tinyfleet_agent.protocol import BundleRecord, director_target_custom, wrap_key
from tuf.api.metadata import Metadata, TargetFile, Targets

from fleet.devices import push
from fleet.models import Assignment, Bundle, Device, TufMetadata
from fleet.models.keys import KeyRole, Repo
from fleet.security import image_repo, keystore
from fleet.security.masterkey import unseal

CONTENT_KEY_PURPOSE = "bundle-content-key"


class AssignmentError(Exception):
    """The bundle cannot be assigned to this device (unpublished, revoked device)."""


class NotAssignedError(LookupError):
    """The device has no current assignment, so there is no director metadata."""


def content_key(bundle: Bundle) -> bytes:
    """The bundle's content key, unsealed from under the master key."""
    if bundle.content_key_sealed is None:
        raise AssignmentError(f"bundle {bundle.pk} has no content key (not published)")
    return unseal(bytes(bundle.content_key_sealed), purpose=CONTENT_KEY_PURPOSE, bound_to=bundle.pk)


def current_assignment(device: Device) -> Assignment | None:
    return (
        Assignment.objects.select_related("bundle")
        .filter(device=device, ended_at__isnull=True)
        .first()
    )


def recent_bundle_ids(device: Device) -> list[str]:
    """The bundles of the device's current and previous assignments (newest first)."""
    rows = Assignment.objects.filter(device=device).order_by("-created_at", "-id")
    return list(rows.values_list("bundle_id", flat=True)[:2])


def _wrap_for(device: Device, bundle: Bundle) -> bytes:
    return wrap_key(
        content_key(bundle),
        bytes.fromhex(device.encryption_public_key),
        bundle_id=bundle.pk,
        release=bundle.release,
        device_id=str(device.pk),
    )


def assign(device: Device, bundle: Bundle) -> Assignment:
    """Make `bundle` the device's current assignment and sign its director metadata.

    Assigning the bundle the device already has is a no-op (returns the current row).

    Raises:
        AssignmentError: the device is revoked or the bundle is not published.
    """
    if device.revoked_at is not None:
        raise AssignmentError(f"device {device.pk} is revoked")
    if not bundle.is_published or bundle.record is None:
        raise AssignmentError(f"bundle {bundle.pk} is not published")
    now = timezone.now()
    with transaction.atomic():
        image_repo.lock(Repo.DIRECTOR)
        current = current_assignment(device)
        if current is not None and current.bundle_id == bundle.pk:
            return current
        if current is not None:
            Assignment.objects.filter(pk=current.pk).update(ended_at=now)
        assignment = Assignment.objects.create(
            device=device, bundle=bundle, wrapped_key=_wrap_for(device, bundle), created_at=now
        )
        _sign(assignment, now)
        push.wake_after_commit([device.pk])  # MQTT hint to poll now (if configured)
    return assignment


def unassign(device: Device) -> bool:
    """End the device's current assignment; returns False when it had none."""
    with transaction.atomic():
        image_repo.lock(Repo.DIRECTOR)
        ended = Assignment.objects.filter(device=device, ended_at__isnull=True).update(
            ended_at=timezone.now()
        )
        if ended or device.revoked_at is not None:
            # A revoked device learns it at its next poll (401): make that poll now.
            push.wake_after_commit([device.pk])
    return bool(ended)


def _target_of(bundle: Bundle) -> TargetFile:
    # Rebuilt from the signed image target, so length, hashes and custom are identical.
    record = BundleRecord.from_dict(bundle.record)
    cipher = record.cipher
    return TargetFile(
        cipher.ciphertext_length,
        {"sha256": cipher.ciphertext_sha256},
        bundle.target_name,
        {"custom": {}},
    )


def _sign(assignment: Assignment, now: datetime) -> TufMetadata:
    """Sign a new version of the device's director targets (repo locked)."""
    device, bundle = assignment.device, assignment.bundle
    previous = image_repo.latest_row(Repo.DIRECTOR, KeyRole.TARGETS, device)
    version = previous.version + 1 if previous else 1
    target = _target_of(bundle)
    target.unrecognized_fields["custom"] = director_target_custom(
        BundleRecord.from_dict(bundle.record),
        device_id=str(device.pk),
        wrapped_key=bytes(assignment.wrapped_key),
    )
    md = Metadata(
        Targets(
            version=version,
            expires=image_repo.expiry(Repo.DIRECTOR, KeyRole.TARGETS, now),
            targets={target.path: target},
        )
    )
    signers = keystore.online_signers(Repo.DIRECTOR, KeyRole.TARGETS)
    return image_repo.sign_and_store(
        Repo.DIRECTOR, KeyRole.TARGETS, md, signers, device=device, assignment=assignment
    )


def _needs_signing(row: TufMetadata | None, assignment: Assignment, now: datetime) -> bool:
    if row is None or row.assignment_id != assignment.pk:
        return True
    return image_repo.is_due(row, Repo.DIRECTOR, KeyRole.TARGETS, now)


def director_targets_bytes(device: Device) -> bytes:
    """The device's signed director targets metadata, exactly as it must be served.

    Raises:
        NotAssignedError: the device has no current assignment (or is revoked).
    """
    if device.revoked_at is not None:
        raise NotAssignedError(f"device {device.pk} is revoked")
    assignment = current_assignment(device)
    if assignment is None:
        raise NotAssignedError(f"no bundle is assigned to device {device.pk}")
    now = timezone.now()
    row = image_repo.latest_row(Repo.DIRECTOR, KeyRole.TARGETS, device)
    if _needs_signing(row, assignment, now):
        with transaction.atomic():
            image_repo.lock(Repo.DIRECTOR)
            # Another request may have signed it while we waited for the lock.
            row = image_repo.latest_row(Repo.DIRECTOR, KeyRole.TARGETS, device)
            current = current_assignment(device)
            if current is None:
                raise NotAssignedError(f"no bundle is assigned to device {device.pk}")
            if _needs_signing(row, current, now):
                row = _sign(current, now)
    assert row is not None
    return bytes(row.data)


def _current_assignments() -> QuerySet[Assignment]:
    return Assignment.objects.select_related("device", "bundle").filter(
        ended_at__isnull=True, device__revoked_at__isnull=True
    )


def resign_all(now: datetime | None = None) -> int:
    """Re-sign every current assignment (after the director targets key rotated)."""
    now = now or timezone.now()
    count = 0
    for assignment in _current_assignments():
        _sign(assignment, now)
        count += 1
    return count


def refresh_director(now: datetime | None = None) -> int:
    """Re-sign director metadata that nears expiry; returns how many were re-signed."""
    now = now or timezone.now()
    cutoff = now + image_repo.lifetime(Repo.DIRECTOR, KeyRole.TARGETS) / 2
    fresh = TufMetadata.objects.filter(
        repo=Repo.DIRECTOR, role=KeyRole.TARGETS, assignment=OuterRef("pk"), expires__gte=cutoff
    )
    count = 0
    with transaction.atomic():
        image_repo.lock(Repo.DIRECTOR)
        # One query finds the stale ones: a beat must not cost a query per device.
        for assignment in _current_assignments().filter(~Exists(fresh)):
            _sign(assignment, now)
            count += 1
    return count
