"""Bundle format and verification: the public facade.

Server (publish): `generate_content_key` -> `encrypt_bundle` -> `BundleRecord`
-> `image_target_custom` on a TUF target; per device `wrap_key` ->
`director_target_custom`.

Device (install): `resolve_assignment` -> `download_capped` (signed length as
a hard cap, signed sha256) -> `unwrap_key` -> `decrypt_bundle` -> install ->
`TrustedState.record_installed`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from ._internal.errors import (
    BadSignatureError,
    BadVersionError,
    BundleError,
    ExpiredMetadataError,
    InconsistentMetadataError,
    InvalidRecordError,
    KeyUnwrapError,
    LengthExceededError,
    MalformedMetadataError,
    MixAndMatchError,
    PayloadExtendedError,
    PayloadTamperedError,
    PayloadTruncatedError,
    RollbackError,
    WrongDeviceError,
)
from ._internal.keywrap import unwrap_key, wrap_key
from ._internal.limits import DEFAULT_LIMITS, Limits
from ._internal.record import (
    BundleRecord,
    PipelineSpec,
    canonical_json,
    director_target_custom,
    image_target_custom,
)
from ._internal.stream_aead import (
    CipherParams,
    atomic_output,
    decrypt_file,
    encrypt_file,
    generate_key,
)
from ._internal.tuf_verify import (
    Assignment,
    DirectorTargets,
    ImageMetadata,
    TrustedState,
    match_assignment,
    resolve_assignment,
    update_root,
    update_root_chain,
    verify_director_targets,
    verify_image_metadata,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Assignment",
    "BadSignatureError",
    "BadVersionError",
    "BundleError",
    "BundleRecord",
    "CipherParams",
    "DirectorTargets",
    "ExpiredMetadataError",
    "ImageMetadata",
    "InconsistentMetadataError",
    "InvalidRecordError",
    "KeyUnwrapError",
    "LengthExceededError",
    "Limits",
    "MalformedMetadataError",
    "MixAndMatchError",
    "PayloadExtendedError",
    "PayloadTamperedError",
    "PayloadTruncatedError",
    "PipelineSpec",
    "Readable",
    "RollbackError",
    "TrustedState",
    "WrongDeviceError",
    "canonical_json",
    "decrypt_bundle",
    "director_target_custom",
    "download_capped",
    "encrypt_bundle",
    "generate_content_key",
    "image_target_custom",
    "match_assignment",
    "resolve_assignment",
    "unwrap_key",
    "update_root",
    "update_root_chain",
    "verify_director_targets",
    "verify_image_metadata",
    "wrap_key",
]


@runtime_checkable
class Readable(Protocol):
    """A binary stream: a file, an HTTP response body."""

    def read(self, size: int, /) -> bytes:
        """Return up to `size` bytes; b"" at the end."""
        ...


generate_content_key = generate_key
encrypt_bundle = encrypt_file
decrypt_bundle = decrypt_file


def _blocks(source: Iterable[bytes] | Readable, max_length: int, block: int) -> Iterable[bytes]:
    if not isinstance(source, Readable):
        yield from source
        return
    read = source.read
    remaining = max_length + 1
    while True:
        # Ask for at most one byte past the cap: enough to detect an overrun
        # without ever buffering an attacker's endless stream.
        data = read(max(1, min(block, remaining)))
        if not data:
            return
        remaining -= len(data)
        yield data


def download_capped(
    source: Iterable[bytes] | Readable,
    dst: Path,
    max_length: int,
    *,
    expected_sha256: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> int:
    """Stream `source` into `dst`, never accepting more than `max_length` bytes.

    `source` is an iterable of byte chunks (an HTTP body iterator) or a binary
    file-like object. The file appears at `dst` atomically, and only when the
    stream ended within the cap and, if given, its SHA-256 equals
    `expected_sha256` (pass the signed target length and hash). Space for
    `max_length` bytes is reserved first, so a full disk fails at once.
    Returns the number of bytes written.

    Raises:
        LengthExceededError: the source sent more than `max_length` bytes; the
            stream is abandoned at once and nothing is left on disk.
        PayloadTruncatedError: with `expected_sha256`, fewer bytes arrived.
        PayloadTamperedError: with `expected_sha256`, the digest differs.
        OSError: writing failed (ENOSPC: not enough space for `max_length`).
    """
    if type(max_length) is not int or max_length < 0:
        raise ValueError("max_length must be an integer >= 0")
    digest = hashlib.sha256()
    written = 0
    with atomic_output(Path(dst), max_length) as out:
        for data in _blocks(source, max_length, limits.download_block_size):
            written += len(data)
            if written > max_length:
                raise LengthExceededError(f"source sent more than the signed {max_length} bytes")
            digest.update(data)
            out.write(data)
        if expected_sha256 is not None:
            if written < max_length:
                raise PayloadTruncatedError(f"got {written} of {max_length} signed bytes")
            if not hmac.compare_digest(digest.hexdigest(), expected_sha256):
                raise PayloadTamperedError("downloaded digest differs from the signed one")
    return written
