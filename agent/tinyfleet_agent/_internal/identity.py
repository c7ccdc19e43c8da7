"""The device's keys: an Ed25519 identity and an X25519 decryption key, generated here
and never sent anywhere (only their public halves are). Files are 0600."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .stream_aead import atomic_write_bytes

IDENTITY_FILE = "identity.key"
DECRYPTION_FILE = "decryption.key"
CREDENTIAL_FILE = "credential"
DEVICE_FILE = "device.json"
ENROLL_PURPOSE = "tinyfleet-enroll-v1"


@dataclass(frozen=True)
class DeviceKeys:
    identity: Ed25519PrivateKey
    decryption: X25519PrivateKey

    @property
    def identity_public_hex(self) -> str:
        return self.identity.public_key().public_bytes_raw().hex()

    @property
    def encryption_public_hex(self) -> str:
        return self.decryption.public_key().public_bytes_raw().hex()

    def proof(self, token: str, name: str) -> str:
        """Proof of possession for enrollment: the identity key signs the request."""
        body = {
            "purpose": ENROLL_PURPOSE,
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "encryption_public_key": self.encryption_public_hex,
            "name": name,
        }
        message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return self.identity.sign(message).hex()


def write_secret(path: Path, data: bytes) -> None:
    """Write with 0600 from the start (no window where the file is world-readable)."""
    old = os.umask(0o077)
    try:
        atomic_write_bytes(path, data)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)


def load_or_create_keys(state_dir: Path) -> DeviceKeys:
    identity_path, decryption_path = state_dir / IDENTITY_FILE, state_dir / DECRYPTION_FILE
    if not identity_path.exists():
        write_secret(identity_path, Ed25519PrivateKey.generate().private_bytes_raw())
    if not decryption_path.exists():
        write_secret(decryption_path, X25519PrivateKey.generate().private_bytes_raw())
    return DeviceKeys(
        identity=Ed25519PrivateKey.from_private_bytes(identity_path.read_bytes()),
        decryption=X25519PrivateKey.from_private_bytes(decryption_path.read_bytes()),
    )
