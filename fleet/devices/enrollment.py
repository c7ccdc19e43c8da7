"""Device enrollment: a one-time token, keys generated on the device, proof of possession."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from django.db import IntegrityError, transaction
from django.db.models import F

from fleet.devices.fallback import refresh_devices
from fleet.models import Device, EnrollmentToken
from fleet.models.devices import DEVICE_CREDENTIAL_PREFIX, check_labels, digest

ENROLL_PURPOSE = "tinyfleet-enroll-v1"
MAX_FACTS_BYTES = 16 * 1024


class EnrollmentError(Exception):
    status = 400


class EnrollmentDeniedError(EnrollmentError):
    status = 401


class AlreadyEnrolledError(EnrollmentError):
    status = 409


def proof_message(token: str, encryption_public_key: str, name: str) -> bytes:
    """The bytes the device signs with its identity key (canonical JSON)."""
    body = {
        "purpose": ENROLL_PURPOSE,
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        "encryption_public_key": encryption_public_key,
        "name": name,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _public_key_bytes(hex_value: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(hex_value)
    except (ValueError, TypeError) as exc:
        raise EnrollmentError(f"{what} must be 32 bytes of hex") from exc
    if len(raw) != 32:
        raise EnrollmentError(f"{what} must be 32 bytes of hex")
    return raw


def check_proof(token: str, identity_key: str, encryption_key: str, name: str, proof: str) -> None:
    """Raises EnrollmentError unless `proof` is the identity key's signature."""
    identity = Ed25519PublicKey.from_public_bytes(_public_key_bytes(identity_key, "identity key"))
    X25519PublicKey.from_public_bytes(_public_key_bytes(encryption_key, "encryption key"))
    try:
        identity.verify(bytes.fromhex(proof), proof_message(token, encryption_key, name))
    except (InvalidSignature, ValueError) as exc:
        raise EnrollmentError("proof of possession does not verify with the identity key") from exc


def enroll(
    *,
    token: str,
    name: str,
    labels: dict[str, Any],
    facts: dict[str, Any],
    identity_public_key: str,
    encryption_public_key: str,
    proof: str,
) -> tuple[Device, str]:
    """Create a device for a valid token; returns it and its credential (shown once).

    Raises:
        EnrollmentDeniedError: unknown, revoked, expired or used-up token (401).
        AlreadyEnrolledError: the identity key is enrolled already (409).
        EnrollmentError: malformed keys, labels, facts or proof (400).
    """
    name = (name or "").strip()
    if not 0 < len(name) <= 100:
        raise EnrollmentError("name must be 1-100 characters")
    try:
        labels = check_labels(labels)
    except ValueError as exc:
        raise EnrollmentError(str(exc)) from exc
    if not isinstance(facts, dict) or len(json.dumps(facts)) > MAX_FACTS_BYTES:
        raise EnrollmentError(f"facts must be an object under {MAX_FACTS_BYTES} bytes")
    check_proof(token, identity_public_key, encryption_public_key, name, proof)
    credential = DEVICE_CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        record = EnrollmentToken.objects.select_for_update().filter(digest=digest(token)).first()
        if record is None:
            raise EnrollmentDeniedError("unknown enrollment token")
        problem = record.problem()
        if problem:
            raise EnrollmentDeniedError(problem)
        try:
            with transaction.atomic():
                device = Device.objects.create(
                    name=name,
                    labels={**record.labels, **labels},
                    facts=facts,
                    identity_public_key=identity_public_key.lower(),
                    encryption_public_key=encryption_public_key.lower(),
                    credential_digest=digest(credential),
                    enrolled_with=record,
                )
        except IntegrityError as exc:
            raise AlreadyEnrolledError("this identity key is already enrolled") from exc
        device.groups.add(record.group)
        refresh_devices([device])  # the group may have the low-confidence fallback on
        EnrollmentToken.objects.filter(pk=record.pk).update(uses=F("uses") + 1)
    return device, credential
