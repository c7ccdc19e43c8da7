"""Per-device wrapping of bundle content keys with HPKE (RFC 9180, base mode).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The HPKE `info`
binds the purpose, bundle id, release and device id, so a wrapped key replayed
for another bundle, release or device does not open.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from .errors import KeyUnwrapError

__all__ = ["WRAPPED_KEY_SIZE", "key_info", "unwrap_key", "wrap_key"]

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_LABEL = b"tinyfleet-bundle-key-v1"
_CONTENT_KEY_SIZE = 32
_MAX_ID_BYTES = 255
# enc (32-byte X25519 public key) || AES-256-GCM(content key) with 16-byte tag.
WRAPPED_KEY_SIZE = KEM.X25519.enc_length() + _CONTENT_KEY_SIZE + 16


def _id_field(name: str, value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    raw = value.encode("utf-8")
    if len(raw) > _MAX_ID_BYTES:
        raise ValueError(f"{name} is longer than {_MAX_ID_BYTES} bytes")
    return struct.pack(">B", len(raw)) + raw


def key_info(*, bundle_id: str, release: int, device_id: str) -> bytes:
    """Return the canonical HPKE `info` for one bundle, release and device.

    Layout: label || 0x00 || len8 bundle_id || u64 release || len8 device_id.
    Length prefixes make the encoding injective, so no two different triples
    share an `info`.

    Raises:
        ValueError: an id is empty or too long, or release is not an int >= 0.
    """
    if type(release) is not int or not 0 <= release < 1 << 64:
        raise ValueError("release must be an integer >= 0")
    return b"".join(
        (
            _LABEL,
            b"\x00",
            _id_field("bundle_id", bundle_id),
            struct.pack(">Q", release),
            _id_field("device_id", device_id),
        )
    )


def _public_key(key: X25519PublicKey | bytes) -> X25519PublicKey:
    if isinstance(key, X25519PublicKey):
        return key
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return X25519PublicKey.from_public_bytes(bytes(key))
    raise ValueError("device public key must be an X25519PublicKey or 32 raw bytes")


def _private_key(key: X25519PrivateKey | bytes) -> X25519PrivateKey:
    if isinstance(key, X25519PrivateKey):
        return key
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return X25519PrivateKey.from_private_bytes(bytes(key))
    raise ValueError("device private key must be an X25519PrivateKey or 32 raw bytes")


def wrap_key(
    content_key: bytes,
    device_public_x25519: X25519PublicKey | bytes,
    *,
    bundle_id: str,
    release: int,
    device_id: str,
) -> bytes:
    """Seal `content_key` to one device; return enc || ciphertext (80 bytes).

    Pass `X25519PublicKey` objects when wrapping for many devices: parsing raw
    bytes each time costs extra.

    Raises:
        ValueError: bad key sizes or ids.
    """
    if not isinstance(content_key, bytes | bytearray) or len(content_key) != _CONTENT_KEY_SIZE:
        raise ValueError("content key must be 32 bytes")
    info = key_info(bundle_id=bundle_id, release=release, device_id=device_id)
    return _SUITE.encrypt(bytes(content_key), _public_key(device_public_x25519), info=info)


def unwrap_key(
    wrapped: bytes,
    device_private_x25519: X25519PrivateKey | bytes,
    *,
    bundle_id: str,
    release: int,
    device_id: str,
) -> bytes:
    """Open a wrapped content key with the device's X25519 private key.

    Raises:
        KeyUnwrapError: wrong size, wrong device key, or wrapped for another
            bundle, release or device.
        ValueError: bad private key or ids.
    """
    if not isinstance(wrapped, bytes | bytearray) or len(wrapped) != WRAPPED_KEY_SIZE:
        raise KeyUnwrapError(f"wrapped key must be {WRAPPED_KEY_SIZE} bytes")
    info = key_info(bundle_id=bundle_id, release=release, device_id=device_id)
    private_key = _private_key(device_private_x25519)
    try:
        key = _SUITE.decrypt(bytes(wrapped), private_key, info=info)
    except (InvalidTag, ValueError):
        # ValueError too: a malformed `enc` must look like any other failure.
        raise KeyUnwrapError("wrapped key does not open for this device and bundle") from None
    if len(key) != _CONTENT_KEY_SIZE:
        raise KeyUnwrapError("unwrapped key has the wrong size")
    return key
