"""Chunked AEAD for bundle payloads: the STREAM construction.

STREAM (Hoang, Reyhanitabar, Rogaway, Vizar 2015) splits the payload into
chunks sealed under one key with nonce = prefix(7) || counter(4, big-endian)
|| last-flag(1). The counter stops reordering, the flag stops truncation at a
chunk boundary, and because every chunk is authenticated on its own the device
can write each chunk to disk as soon as it verifies, in constant memory.

The ciphertext is the bare concatenation of sealed chunks; all parameters live
in the signed bundle record (`CipherParams`). Every chunk's AAD binds those
parameters and the signed plaintext SHA-256, so a ciphertext cannot be replayed
under another record.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import queue
import re
import struct
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import (
    InvalidRecordError,
    LengthExceededError,
    PayloadExtendedError,
    PayloadTamperedError,
    PayloadTruncatedError,
)
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "CIPHERS",
    "DEFAULT_CHUNK_SIZE",
    "KEY_SIZE",
    "CipherParams",
    "atomic_output",
    "atomic_write_bytes",
    "ciphertext_length_for",
    "decrypt_file",
    "encrypt_file",
    "generate_key",
]

CIPHERS = ("aes-256-gcm", "chacha20-poly1305")
KEY_SIZE = 32
SALT_SIZE = 7
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 30
# The counter is 4 bytes: more chunks would reuse a nonce.
MAX_CHUNKS = 1 << 32
# JSON numbers above 2**53 lose precision in other languages' parsers.
MAX_LENGTH = 1 << 53
_AAD_LABEL = b"tinyfleet-stream-v1\x00"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SALT_HEX = re.compile(f"[0-9a-f]{{{2 * SALT_SIZE}}}")

_Aead = AESGCM | ChaCha20Poly1305


@dataclass(frozen=True)
class CipherParams:
    """Parameters of one encrypted payload, signed inside the bundle record.

    Raises:
        InvalidRecordError: on construction, if any field is malformed or the
            lengths disagree with each other.
    """

    cipher: str
    chunk_size: int
    salt: str
    plaintext_sha256: str
    plaintext_length: int
    ciphertext_length: int
    ciphertext_sha256: str

    def __post_init__(self) -> None:
        _check_choice("cipher", self.cipher, CIPHERS)
        _check_int("chunk_size", self.chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        _check_hex("salt", self.salt, _SALT_HEX)
        _check_hex("plaintext_sha256", self.plaintext_sha256, _SHA256_HEX)
        _check_hex("ciphertext_sha256", self.ciphertext_sha256, _SHA256_HEX)
        _check_int("plaintext_length", self.plaintext_length, 0, MAX_LENGTH)
        _check_int("ciphertext_length", self.ciphertext_length, TAG_SIZE, MAX_LENGTH)
        if chunk_count(self.plaintext_length, self.chunk_size) > MAX_CHUNKS:
            raise InvalidRecordError("too many chunks for a 32-bit counter")
        expected = ciphertext_length_for(self.plaintext_length, self.chunk_size)
        if self.ciphertext_length != expected:
            raise InvalidRecordError("ciphertext_length disagrees with plaintext_length")

    @property
    def chunk_count(self) -> int:
        """Number of sealed chunks (an empty payload still has one)."""
        return chunk_count(self.plaintext_length, self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-compatible form stored in the bundle record."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CipherParams:
        """Parse the record form, rejecting unknown or missing fields.

        Raises:
            InvalidRecordError: the mapping is not exactly a valid CipherParams.
        """
        if not isinstance(data, Mapping):
            raise InvalidRecordError("cipher params must be an object")
        expected = set(cls.__dataclass_fields__)
        if set(data) != expected:
            raise InvalidRecordError(f"cipher params must have exactly {sorted(expected)}")
        return cls(**data)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise InvalidRecordError(f"{name} must be one of {choices}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; True must not pass as a length.
    if type(value) is not int or not low <= value <= high:
        raise InvalidRecordError(f"{name} must be an integer in [{low}, {high}]")


def _check_hex(name: str, value: object, pattern: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidRecordError(f"{name} must be lowercase hex of the right length")


def chunk_count(plaintext_length: int, chunk_size: int) -> int:
    """Return the number of chunks; an empty payload is one empty final chunk."""
    return max(1, -(-plaintext_length // chunk_size))


def ciphertext_length_for(plaintext_length: int, chunk_size: int) -> int:
    """Return the exact ciphertext length for a plaintext length and chunk size."""
    return plaintext_length + TAG_SIZE * chunk_count(plaintext_length, chunk_size)


def generate_key() -> bytes:
    """Return a fresh random 256-bit content key."""
    return os.urandom(KEY_SIZE)


def _aad(cipher: str, chunk_size: int, salt: bytes, length: int, digest: bytes) -> bytes:
    # Fixed-width fields after a versioned label: unambiguous without escaping.
    return b"".join(
        (
            _AAD_LABEL,
            cipher.encode("ascii"),
            b"\x00",
            struct.pack(">QQ", chunk_size, length),
            salt,
            digest,
        )
    )


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _aead(cipher: str, key: bytes) -> _Aead:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise ValueError("content key must be 32 bytes")
    if cipher == "aes-256-gcm":
        return AESGCM(bytes(key))
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(bytes(key))
    raise ValueError(f"cipher must be one of {CIPHERS}")


def _read_full(f: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `f`; return the byte count, short only at end of file."""
    got = 0
    size = len(view)
    while got < size:
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _preallocate(fd: int, size: int) -> None:
    # Reserving the blocks up front fails fast on a full disk, before any
    # work, and spares the filesystem delayed allocation at rename/fsync time.
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        # Filesystems without fallocate: plain writes work as well.


@contextmanager
def atomic_output(dst: Path, size_hint: int = 0) -> Iterator[BinaryIO]:
    """Yield a temp file beside `dst`; on clean exit fsync and rename it over `dst`.

    On any exception the temp file is deleted and `dst` is left untouched, so a
    crash or a failed verification never leaves a partial file behind. A
    `size_hint` preallocates the file (the final size is what was written), so
    a full disk fails before any work.

    Raises:
        OSError: the temp file cannot be created, preallocated, written or
            renamed (ENOSPC when the disk lacks `size_hint` bytes).
    """
    dst = Path(dst)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _preallocate(fd, size_hint)
            yield out
            out.flush()
            # Drop any preallocated tail beyond what was written.
            os.ftruncate(fd, out.tell())
            os.fsync(fd)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def atomic_write_bytes(dst: Path, data: bytes) -> None:
    """Write `data` to `dst` atomically (temp file, fsync, rename).

    Raises:
        OSError: the file cannot be written.
    """
    with atomic_output(dst) as out:
        out.write(data)


def _hash_file(src: Path, buf: memoryview) -> tuple[bytes, int]:
    h = hashlib.sha256()
    length = 0
    with open(src, "rb", buffering=0) as f:
        while n := _read_full(f, buf):
            h.update(buf[:n])
            length += n
    return h.digest(), length


def encrypt_file(
    src: Path,
    dst: Path,
    key: bytes,
    *,
    cipher: str = "aes-256-gcm",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> CipherParams:
    """Encrypt `src` into `dst` with STREAM in constant memory.

    Two passes: the first hashes the plaintext (its digest goes into every
    chunk's AAD), the second re-hashes while encrypting to prove the source did
    not change in between. `dst` appears atomically, only when complete.

    Raises:
        ValueError: bad key, cipher or chunk size.
        PayloadTamperedError: `src` changed while it was being encrypted.
        OSError: reading or writing failed.
    """
    _check_choice("cipher", cipher, CIPHERS)
    _check_int("chunk_size", chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    aead = _aead(cipher, key)
    inbuf = memoryview(bytearray(chunk_size))
    outbuf = memoryview(bytearray(chunk_size + TAG_SIZE))
    digest, length = _hash_file(Path(src), inbuf)
    n_chunks = chunk_count(length, chunk_size)
    if n_chunks > MAX_CHUNKS:
        raise ValueError("payload too large for this chunk size")
    salt = os.urandom(SALT_SIZE)
    aad = _aad(cipher, chunk_size, salt, length, digest)
    pt_hash, ct_hash = hashlib.sha256(), hashlib.sha256()
    with open(src, "rb", buffering=0) as f, atomic_output(Path(dst)) as out:
        for index in range(n_chunks):
            size = min(chunk_size, length - index * chunk_size)
            if _read_full(f, inbuf[:size]) != size:
                raise PayloadTamperedError("source shrank while encrypting")
            pt_hash.update(inbuf[:size])
            sealed = outbuf[: size + TAG_SIZE]
            aead.encrypt_into(_nonce(salt, index, index == n_chunks - 1), inbuf[:size], aad, sealed)
            ct_hash.update(sealed)
            out.write(sealed)
        if f.read(1) or pt_hash.digest() != digest:
            raise PayloadTamperedError("source changed while encrypting")
    return CipherParams(
        cipher=cipher,
        chunk_size=chunk_size,
        salt=salt.hex(),
        plaintext_sha256=digest.hex(),
        plaintext_length=length,
        ciphertext_length=ciphertext_length_for(length, chunk_size),
        ciphertext_sha256=ct_hash.hexdigest(),
    )


def _check_ciphertext_size(f: BinaryIO, params: CipherParams) -> None:
    # Cheap early rejection before any cryptographic work.
    size = os.fstat(f.fileno()).st_size
    if size < params.ciphertext_length:
        raise PayloadTruncatedError(
            f"ciphertext is {size} bytes, signed {params.ciphertext_length}"
        )
    if size > params.ciphertext_length:
        raise PayloadExtendedError(f"ciphertext is {size} bytes, signed {params.ciphertext_length}")


_SYNC_EVERY = 16 << 20
# macOS has no fdatasync; fsync is the portable superset.
_fdatasync = getattr(os, "fdatasync", os.fsync)


class _ChunkWriter:
    """Write plaintext chunks from a background thread.

    Writing fresh file pages costs about as much as SHA-256 plus AES-GCM
    together, and flushing them to disk more; both release the GIL, so on a
    second core they overlap with decryption. Syncing every `_SYNC_EVERY` bytes
    keeps the final fsync short. Buffers cycle through a small pool: memory
    stays constant.
    """

    def __init__(self, out: BinaryIO, chunk_size: int, depth: int = 3) -> None:
        self._out = out
        self._sync_every = _SYNC_EVERY
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        for _ in range(depth):
            self._free.put(memoryview(bytearray(chunk_size)))
        self._thread = threading.Thread(target=self._run, name="tinyfleet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        unsynced = 0
        while (item := self._full.get()) is not None:
            buf, size = item
            if self._error is None:
                try:
                    self._out.write(buf[:size])
                    unsynced += size
                    if unsynced >= self._sync_every:
                        self._out.flush()
                        _fdatasync(self._out.fileno())
                        unsynced = 0
                except BaseException as e:  # handed to the caller's thread
                    self._error = e
            self._free.put(buf)

    def buffer(self) -> memoryview:
        """Return a free chunk buffer (blocks while all are queued)."""
        buf = self._free.get()
        if self._error is not None:
            raise self._error
        return buf

    def submit(self, buf: memoryview, size: int) -> None:
        """Queue the first `size` bytes of `buf` for writing."""
        self._full.put((buf, size))

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._error is None:
            self._error = exc  # the thread skips what is still queued
        # Always join before the caller closes or deletes the file.
        self._full.put(None)
        self._thread.join()
        if exc is None and self._error is not None:
            raise self._error


def _decrypt_chunks(
    f: BinaryIO,
    out: BinaryIO,
    aead: _Aead,
    params: CipherParams,
    ct_hash: Any,
) -> None:
    """Decrypt every chunk into `out`, authenticating each before it is queued.

    No plaintext digest is computed: every chunk authenticates under the content key
    with an AAD that binds the signed plaintext digest and length, and the ciphertext
    digest is checked against the signed one (by the caller while downloading, or here
    with `ct_hash`), so the plaintext is fixed by what was signed (docs/security.md,
    "Chunked encryption"). A second SHA-256 pass would cost as much as the floor itself.
    """
    salt = bytes.fromhex(params.salt)
    aad = _aad(
        params.cipher,
        params.chunk_size,
        salt,
        params.plaintext_length,
        bytes.fromhex(params.plaintext_sha256),
    )
    # Preallocated buffers: no per-chunk allocation, constant memory.
    inbuf = memoryview(bytearray(params.chunk_size + TAG_SIZE))
    remaining = params.plaintext_length
    n_chunks = params.chunk_count
    with _ChunkWriter(out, params.chunk_size) as writer:
        for index in range(n_chunks):
            size = min(params.chunk_size, remaining)
            sealed, outbuf = inbuf[: size + TAG_SIZE], writer.buffer()
            if _read_full(f, sealed) != len(sealed):
                raise PayloadTruncatedError(f"ciphertext ends inside chunk {index}")
            if ct_hash is not None:
                ct_hash.update(sealed)
            nonce = _nonce(salt, index, index == n_chunks - 1)
            try:
                # The last flag in the nonce makes a chunk-boundary truncation fail here.
                aead.decrypt_into(nonce, sealed, aad, outbuf[:size])
            except InvalidTag:
                raise PayloadTamperedError(f"chunk {index} failed authentication") from None
            # Only authenticated plaintext is queued for writing.
            writer.submit(outbuf, size)
            remaining -= size
    if f.read(1):
        raise PayloadExtendedError("data follows the last chunk")


def decrypt_file(
    src: Path,
    dst: Path,
    key: bytes,
    params: CipherParams,
    *,
    check_ciphertext_hash: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Decrypt `src` into `dst`, writing only authenticated chunks.

    The ciphertext size is checked before any work; each chunk is authenticated
    (its AAD binds the signed plaintext digest and length, its nonce the chunk
    index and the last-chunk flag) before it is written to a temp file, and the
    temp file is renamed to `dst` only when every chunk passed and the
    ciphertext digest equals the signed one. Pass `check_ciphertext_hash=False`
    only when the caller already verified that digest (`download_capped` does):
    the file is then read, decrypted and written in one pass.

    Raises:
        ValueError: the key is not 32 bytes.
        LengthExceededError: the signed chunk or payload size exceeds `limits`.
        PayloadTruncatedError: the ciphertext is shorter than signed.
        PayloadExtendedError: the ciphertext is longer than signed.
        PayloadTamperedError: a chunk or a digest failed verification.
        OSError: reading or writing failed (no partial `dst` is left).
    """
    if params.chunk_size > limits.max_chunk_size:
        raise LengthExceededError(f"chunk size {params.chunk_size} exceeds the device limit")
    if params.plaintext_length > limits.max_payload_bytes:
        raise LengthExceededError(f"payload {params.plaintext_length} exceeds the device limit")
    aead = _aead(params.cipher, key)
    ct_hash = hashlib.sha256() if check_ciphertext_hash else None
    with open(src, "rb", buffering=0) as f:
        _check_ciphertext_size(f, params)
        with atomic_output(Path(dst), params.plaintext_length) as out:
            _decrypt_chunks(f, out, aead, params, ct_hash)
            if ct_hash is not None and not hmac.compare_digest(
                ct_hash.hexdigest(), params.ciphertext_sha256
            ):
                raise PayloadTamperedError("ciphertext digest differs from the signed one")
