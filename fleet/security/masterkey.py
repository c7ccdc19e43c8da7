"""The master key: every secret the server keeps at rest is sealed under it.

Signing keys and bundle content keys are encrypted with AES-256-GCM under a key
derived with HKDF-SHA256 from the master key and a purpose label; the associated data
binds each sealed value to the row it belongs to, so a sealed value copied into
another row does not open. A database dump without the master key reveals no private
key and no content key.

Production provides the master key (TINYFLEET_MASTER_KEY or TINYFLEET_MASTER_KEY_FILE);
the embedded default generates one once into the data dir (0600) and warns.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

_FORMAT_V1 = b"\x01"
_NONCE_SIZE = 12
_SALT = b"tinyfleet-master-key-v1"
_MIN_KEY_BYTES = 32
_HEX = re.compile(r"[0-9a-fA-F]{64,}")
_warned = False


class MasterKeyError(Exception):
    """A sealed value does not open under the configured master key."""


def _parse(text: str, where: str) -> bytes:
    text = text.strip()
    if _HEX.fullmatch(text) and len(text) % 2 == 0:
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < _MIN_KEY_BYTES:
        raise ImproperlyConfigured(
            f"{where} must be at least {_MIN_KEY_BYTES} random bytes as 64+ hex characters or "
            "base64; generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return raw


def _generated(path: Path) -> bytes:
    """Read the embedded-default key, creating it exactly once across processes."""
    global _warned
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(32).hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            # link() fails if another process won the race: everyone ends up with its key.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    if not _warned:
        _warned = True
        log.warning(
            "using the generated master key in %s: production must provide "
            "TINYFLEET_MASTER_KEY or TINYFLEET_MASTER_KEY_FILE (and back it up)",
            path,
        )
    return _parse(path.read_text(), str(path))


def master_key() -> bytes:
    """The configured master key (generating the embedded default on first use).

    Raises:
        ImproperlyConfigured: the configured key is malformed or too short.
    """
    if settings.MASTER_KEY:
        return _parse(settings.MASTER_KEY, "TINYFLEET_MASTER_KEY")
    return _generated(Path(settings.MASTER_KEY_PATH))


def _derive(purpose: str) -> bytes:
    hkdf = HKDF(algorithm=SHA256(), length=32, salt=_SALT, info=purpose.encode())
    return hkdf.derive(master_key())


def fingerprint() -> str:
    """A short public identifier of the master key (shown on the security page)."""
    return _derive("fingerprint").hex()[:16]


def source() -> str:
    """Where the master key comes from: an environment variable, a file, or generated."""
    if settings.MASTER_KEY_SOURCE == "generated" and not settings.MASTER_KEY:
        return f"generated into {settings.MASTER_KEY_PATH} (embedded default; not for production)"
    return str(settings.MASTER_KEY_SOURCE)


def seal(plaintext: bytes, *, purpose: str, bound_to: str) -> bytes:
    """Encrypt `plaintext` for storage; `bound_to` names the row it belongs to."""
    nonce = os.urandom(_NONCE_SIZE)
    aad = f"{purpose}\x00{bound_to}".encode()
    return _FORMAT_V1 + nonce + AESGCM(_derive(purpose)).encrypt(nonce, plaintext, aad)


def unseal(sealed: bytes, *, purpose: str, bound_to: str) -> bytes:
    """Decrypt a value made by `seal` with the same purpose and binding.

    Raises:
        MasterKeyError: wrong master key, tampered value, or bound to another row.
    """
    blob = bytes(sealed)
    if blob[:1] != _FORMAT_V1 or len(blob) < 1 + _NONCE_SIZE + 16:
        raise MasterKeyError(f"sealed {purpose} for {bound_to} is malformed")
    nonce, body = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
    aad = f"{purpose}\x00{bound_to}".encode()
    try:
        return AESGCM(_derive(purpose)).decrypt(nonce, body, aad)
    except InvalidTag:
        raise MasterKeyError(
            f"sealed {purpose} for {bound_to} does not open with the configured master key "
            f"(fingerprint {fingerprint()}); was TINYFLEET_MASTER_KEY changed?"
        ) from None
