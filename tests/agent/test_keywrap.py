"""HPKE key wrapping: round trips, binding of `info`, malformed input."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from tinyfleet_agent._internal.keywrap import WRAPPED_KEY_SIZE, key_info
from tinyfleet_agent.bundle import KeyUnwrapError, generate_content_key, unwrap_key, wrap_key

BINDING: dict[str, Any] = {"bundle_id": "bundle-1", "release": 7, "device_id": "dev-alice"}


def test_it_round_trips_a_content_key() -> None:
    device = X25519PrivateKey.generate()
    key = generate_content_key()
    wrapped = wrap_key(key, device.public_key(), **BINDING)
    assert len(wrapped) == WRAPPED_KEY_SIZE == 80
    assert unwrap_key(wrapped, device, **BINDING) == key


def test_it_accepts_raw_key_bytes() -> None:
    device = X25519PrivateKey.generate()
    raw_private = device.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    raw_public = device.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = generate_content_key()
    assert unwrap_key(wrap_key(key, raw_public, **BINDING), raw_private, **BINDING) == key


def test_it_wraps_with_a_fresh_ephemeral_key_each_time() -> None:
    public = X25519PrivateKey.generate().public_key()
    key = generate_content_key()
    assert wrap_key(key, public, **BINDING) != wrap_key(key, public, **BINDING)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("ab", 1, "c"), ("a", 1, "bc")),
        (("a", 1, "b"), ("a", 2, "b")),
        (("a", 256, "b"), ("a", 1, "b")),
    ],
)
def test_it_encodes_info_injectively(a: tuple[str, int, str], b: tuple[str, int, str]) -> None:
    def info(t: tuple[str, int, str]) -> bytes:
        return key_info(bundle_id=t[0], release=t[1], device_id=t[2])

    assert info(a) != info(b)
    assert info(a).startswith(b"tinyfleet-bundle-key-v1\x00")


def test_it_refuses_a_tampered_wrapped_key() -> None:
    device = X25519PrivateKey.generate()
    wrapped = bytearray(wrap_key(generate_content_key(), device.public_key(), **BINDING))
    for index in (0, 40, len(wrapped) - 1):
        tampered = bytearray(wrapped)
        tampered[index] ^= 1
        with pytest.raises(KeyUnwrapError):
            unwrap_key(bytes(tampered), device, **BINDING)


@pytest.mark.parametrize("size", [0, 79, 81])
def test_it_refuses_a_wrapped_key_of_the_wrong_size(size: int) -> None:
    with pytest.raises(KeyUnwrapError):
        unwrap_key(b"\x00" * size, X25519PrivateKey.generate(), **BINDING)


def test_it_refuses_another_devices_private_key() -> None:
    alice, mallory = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    wrapped = wrap_key(generate_content_key(), alice.public_key(), **BINDING)
    with pytest.raises(KeyUnwrapError):
        unwrap_key(wrapped, mallory, **BINDING)


@pytest.mark.parametrize(
    "binding",
    [
        {"bundle_id": "", "release": 1, "device_id": "d"},
        {"bundle_id": "b", "release": -1, "device_id": "d"},
        {"bundle_id": "b", "release": True, "device_id": "d"},
        {"bundle_id": "b", "release": 1, "device_id": "x" * 256},
    ],
)
def test_it_rejects_bad_bindings(binding: dict[str, Any]) -> None:
    public = X25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError):
        wrap_key(generate_content_key(), public, **binding)


def test_it_rejects_bad_content_keys() -> None:
    public = X25519PrivateKey.generate().public_key()
    with pytest.raises(ValueError):
        wrap_key(b"short", public, **BINDING)
