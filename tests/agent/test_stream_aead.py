"""STREAM chunked AEAD: round trips at every chunk boundary, both ciphers."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
from tinyfleet_agent._internal import stream_aead
from tinyfleet_agent._internal.stream_aead import TAG_SIZE, ciphertext_length_for
from tinyfleet_agent.bundle import (
    CipherParams,
    InvalidRecordError,
    LengthExceededError,
    Limits,
    PayloadExtendedError,
    PayloadTamperedError,
    PayloadTruncatedError,
    decrypt_bundle,
    encrypt_bundle,
    generate_content_key,
)

CHUNK = 64
CIPHERS = ["aes-256-gcm", "chacha20-poly1305"]
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 17]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _encrypt(
    tmp_path: Path, data: bytes, cipher: str = "aes-256-gcm", chunk: int = CHUNK
) -> tuple[bytes, Path, CipherParams]:
    key = generate_content_key()
    src = _write(tmp_path / "model.bin", data)
    enc = tmp_path / "model.enc"
    params = encrypt_bundle(src, enc, key, cipher=cipher, chunk_size=chunk)
    return key, enc, params


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", SIZES)
def test_it_round_trips_every_chunk_boundary(tmp_path: Path, cipher: str, size: int) -> None:
    data = os.urandom(size)
    key, enc, params = _encrypt(tmp_path, data, cipher)
    out = tmp_path / "model.out"
    decrypt_bundle(enc, out, key, params)
    assert out.read_bytes() == data
    assert params.plaintext_length == size
    assert params.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert params.ciphertext_sha256 == hashlib.sha256(enc.read_bytes()).hexdigest()
    assert enc.stat().st_size == params.ciphertext_length
    assert params.chunk_count == max(1, -(-size // CHUNK))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("cipher", CIPHERS)
def test_it_round_trips_with_the_default_chunk_size(tmp_path: Path, cipher: str) -> None:
    data = os.urandom((1 << 20) * 2 + 5)
    key = generate_content_key()
    params = encrypt_bundle(_write(tmp_path / "m", data), tmp_path / "e", key, cipher=cipher)
    assert params.chunk_size == 1 << 20 and params.chunk_count == 3
    decrypt_bundle(tmp_path / "e", tmp_path / "o", key, params, check_ciphertext_hash=False)
    assert (tmp_path / "o").read_bytes() == data


def test_it_uses_a_fresh_salt_per_bundle(tmp_path: Path) -> None:
    key = generate_content_key()
    src = _write(tmp_path / "m", b"same bytes")
    first = encrypt_bundle(src, tmp_path / "a", key, chunk_size=CHUNK)
    second = encrypt_bundle(src, tmp_path / "b", key, chunk_size=CHUNK)
    assert first.salt != second.salt
    assert first.ciphertext_sha256 != second.ciphertext_sha256


def test_it_computes_ciphertext_length_from_the_signed_fields() -> None:
    assert ciphertext_length_for(0, CHUNK) == TAG_SIZE
    assert ciphertext_length_for(CHUNK, CHUNK) == CHUNK + TAG_SIZE
    assert ciphertext_length_for(CHUNK + 1, CHUNK) == CHUNK + 1 + 2 * TAG_SIZE


def test_it_refuses_the_wrong_key_and_leaves_nothing(tmp_path: Path) -> None:
    _, enc, params = _encrypt(tmp_path, os.urandom(3 * CHUNK))
    with pytest.raises(PayloadTamperedError):
        decrypt_bundle(enc, tmp_path / "out", generate_content_key(), params)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def test_it_refuses_swapped_chunks(tmp_path: Path) -> None:
    key, enc, params = _encrypt(tmp_path, os.urandom(3 * CHUNK))
    blob = enc.read_bytes()
    sealed = CHUNK + TAG_SIZE
    enc.write_bytes(blob[sealed : 2 * sealed] + blob[:sealed] + blob[2 * sealed :])
    with pytest.raises(PayloadTamperedError):
        decrypt_bundle(enc, tmp_path / "out", key, params, check_ciphertext_hash=False)


def test_it_refuses_a_final_chunk_without_the_last_flag(tmp_path: Path) -> None:
    # Forge, with the real key and AAD, a stream whose final chunk is sealed as
    # a middle chunk: only the last flag in the nonce can catch it.
    key, enc, params = _encrypt(tmp_path, os.urandom(2 * CHUNK))
    plaintext = (tmp_path / "model.bin").read_bytes()
    salt = bytes.fromhex(params.salt)
    aad = stream_aead._aad(
        params.cipher,
        CHUNK,
        salt,
        params.plaintext_length,
        bytes.fromhex(params.plaintext_sha256),
    )
    aead = stream_aead._aead(params.cipher, key)
    chunks = [plaintext[:CHUNK], plaintext[CHUNK:]]
    forged = b"".join(
        aead.encrypt(stream_aead._nonce(salt, i, False), c, aad) for i, c in enumerate(chunks)
    )
    enc.write_bytes(forged)
    with pytest.raises(PayloadTamperedError, match="chunk 1"):
        decrypt_bundle(enc, tmp_path / "out", key, params, check_ciphertext_hash=False)


def test_it_refuses_ciphertext_under_another_record(tmp_path: Path) -> None:
    # The AAD binds the signed digest: the same ciphertext with a record
    # claiming a different plaintext digest does not authenticate.
    key, enc, params = _encrypt(tmp_path, os.urandom(CHUNK + 3))
    other = dataclasses.replace(params, plaintext_sha256="0" * 64)
    with pytest.raises(PayloadTamperedError, match="chunk 0"):
        decrypt_bundle(enc, tmp_path / "out", key, other)


def test_it_checks_size_before_decrypting(tmp_path: Path) -> None:
    key, enc, params = _encrypt(tmp_path, os.urandom(2 * CHUNK))
    with enc.open("ab") as f:
        f.write(b"x")
    with pytest.raises(PayloadExtendedError):
        decrypt_bundle(enc, tmp_path / "out", key, params)
    enc.write_bytes(enc.read_bytes()[:-2])
    with pytest.raises(PayloadTruncatedError):
        decrypt_bundle(enc, tmp_path / "out", key, params)


def test_it_keeps_an_existing_destination_when_decryption_fails(tmp_path: Path) -> None:
    key, enc, params = _encrypt(tmp_path, os.urandom(2 * CHUNK))
    out = _write(tmp_path / "active.onnx", b"the working model")
    blob = bytearray(enc.read_bytes())
    blob[5] ^= 1
    enc.write_bytes(bytes(blob))
    with pytest.raises(PayloadTamperedError):
        decrypt_bundle(enc, out, key, params)
    assert out.read_bytes() == b"the working model"


def test_it_enforces_device_limits_on_signed_params(tmp_path: Path) -> None:
    key, enc, params = _encrypt(tmp_path, os.urandom(10), chunk=4096)
    with pytest.raises(LengthExceededError):
        decrypt_bundle(enc, tmp_path / "o", key, params, limits=Limits(max_chunk_size=1024))
    with pytest.raises(LengthExceededError):
        decrypt_bundle(enc, tmp_path / "o", key, params, limits=Limits(max_payload_bytes=5))


def test_it_round_trips_params_through_dict(tmp_path: Path) -> None:
    _, _, params = _encrypt(tmp_path, b"abc")
    assert CipherParams.from_dict(params.to_dict()) == params


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cipher", "aes-128-cbc"),
        ("chunk_size", 0),
        ("chunk_size", True),
        ("salt", "zz" * 7),
        ("salt", "00" * 8),
        ("plaintext_sha256", "A" * 64),
        ("plaintext_length", -1),
        ("ciphertext_length", 1),
        ("ciphertext_sha256", 7),
    ],
)
def test_it_rejects_malformed_params(tmp_path: Path, field: str, value: object) -> None:
    _, _, params = _encrypt(tmp_path, b"abc")
    data = params.to_dict() | {field: value}
    with pytest.raises(InvalidRecordError):
        CipherParams.from_dict(data)


def test_it_rejects_unknown_or_missing_param_fields(tmp_path: Path) -> None:
    _, _, params = _encrypt(tmp_path, b"abc")
    with pytest.raises(InvalidRecordError):
        CipherParams.from_dict(params.to_dict() | {"extra": 1})
    data = params.to_dict()
    del data["salt"]
    with pytest.raises(InvalidRecordError):
        CipherParams.from_dict(data)


def test_it_rejects_bad_keys_and_options(tmp_path: Path) -> None:
    src = _write(tmp_path / "m", b"abc")
    with pytest.raises(ValueError):
        encrypt_bundle(src, tmp_path / "e", b"short")
    with pytest.raises(InvalidRecordError):
        encrypt_bundle(src, tmp_path / "e", generate_content_key(), cipher="rot13")
    assert not (tmp_path / "e").exists()


class _FailingOut:
    def write(self, data: object) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return -1


def test_it_reports_a_write_failure_from_the_writer_thread() -> None:
    writer = stream_aead._ChunkWriter(_FailingOut(), 16)  # type: ignore[arg-type, unused-ignore]
    with pytest.raises(OSError, match="No space"), writer:
        for _ in range(10):
            writer.submit(writer.buffer(), 16)
    assert not writer._thread.is_alive()


def test_it_leaves_nothing_when_the_disk_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, enc, params = _encrypt(tmp_path, os.urandom(4 * CHUNK))

    monkeypatch.setattr(stream_aead._ChunkWriter, "_run", lambda self: _drain_failing(self))
    with pytest.raises(OSError, match="No space"):
        decrypt_bundle(enc, tmp_path / "out", key, params)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


def _drain_failing(writer: stream_aead._ChunkWriter) -> None:
    # Same loop as the real writer, with a disk that is always full.
    while (item := writer._full.get()) is not None:
        writer._error = writer._error or OSError(28, "No space left on device")
        writer._free.put(item[0])


def test_it_refuses_a_ciphertext_whose_digest_is_not_the_signed_one(tmp_path: Path) -> None:
    # Every chunk authenticates (the AAD does not bind the ciphertext digest), so only
    # the signed-digest check stops a file of unknown history; nothing is renamed.
    key, enc, params = _encrypt(tmp_path, os.urandom(3 * CHUNK + 5))
    other = dataclasses.replace(params, ciphertext_sha256="f" * 64)
    with pytest.raises(PayloadTamperedError, match="ciphertext digest"):
        decrypt_bundle(enc, tmp_path / "out", key, other)
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("check_ciphertext_hash", [False, True])
def test_it_leaves_nothing_when_the_last_chunk_is_tampered_after_earlier_ones_were_written(
    tmp_path: Path, check_ciphertext_hash: bool
) -> None:
    # The writer thread has already written the first chunks when the last one fails:
    # the temp file must go, whether or not the ciphertext digest is re-checked.
    key, enc, params = _encrypt(tmp_path, os.urandom(40 * CHUNK + 9))
    blob = bytearray(enc.read_bytes())
    blob[-3] ^= 0x40
    enc.write_bytes(bytes(blob))
    with pytest.raises(PayloadTamperedError, match="chunk 40"):
        decrypt_bundle(
            enc, tmp_path / "out", key, params, check_ciphertext_hash=check_ciphertext_hash
        )
    assert not (tmp_path / "out").exists()
    assert _leftovers(tmp_path) == []
