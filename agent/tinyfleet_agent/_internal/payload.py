"""Safe extraction of a decrypted bundle payload into a slot directory.

The payload is an uncompressed ZIP (ZIP_STORED) the server built. Even though
it decrypted under a key only the signed record opens, extraction trusts
nothing in it: flat, expected member names only; no links, directories,
duplicates or compression (so no bombs); total size and member count capped;
every byte written is counted against the size the directory declared. The
golden set's SHA-256 must equal the signed digest before anything parses it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, PayloadTamperedError
from .stream_aead import fsync_dir as _fsync_dir

__all__ = [
    "GOLDEN_MEMBER",
    "ExtractedPayload",
    "GoldenDigestError",
    "PayloadLimits",
    "UnsafePayloadError",
    "extract_payload",
]

GOLDEN_MEMBER = "golden.npz"
MODEL_MEMBERS = ("model.onnx", "model.tflite")
TOKENIZER_MEMBER = "tokenizer.json"
# External-data files of an ONNX model (flat names, no folders).
_EXTERNAL_DATA = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(data|bin|onnx_data|weights)")
_BLOCK = 1 << 20


class UnsafePayloadError(BundleError):
    """The payload archive breaks a safety rule (names, links, sizes, layout)."""

    reason = "payload-unsafe"


class GoldenDigestError(PayloadTamperedError):
    """golden.npz differs from the golden-set digest in the signed record."""

    reason = "golden-tampered"


@dataclass(frozen=True)
class PayloadLimits:
    """Caps on what one payload may unpack to."""

    max_members: int = 64
    max_total_bytes: int = 8 << 30
    max_member_bytes: int = 8 << 30


@dataclass(frozen=True)
class ExtractedPayload:
    """Where the members of one payload landed."""

    directory: Path
    model: Path
    tokenizer: Path | None
    golden: Path
    files: tuple[str, ...]


def allowed_member(name: str) -> bool:
    """Whether `name` is a member name a payload may hold (model, tokenizer, golden, data)."""
    return (
        name in MODEL_MEMBERS
        or name in (TOKENIZER_MEMBER, GOLDEN_MEMBER)
        or _EXTERNAL_DATA.fullmatch(name) is not None
    )


def _check_member(info: zipfile.ZipInfo, limits: PayloadLimits) -> None:
    name = info.filename
    if "/" in name or "\\" in name or name in (".", "..") or ":" in name:
        raise UnsafePayloadError(f"member {name!r} is not a flat file name")
    if not allowed_member(name):
        raise UnsafePayloadError(f"unexpected member {name!r}")
    kind = stat.S_IFMT(info.external_attr >> 16)
    # Writers that set no Unix type bits (kind 0) mean a plain file.
    if info.is_dir() or kind not in (0, stat.S_IFREG):
        raise UnsafePayloadError(f"member {name!r} is not a regular file")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        # Stored members cannot expand: a size lie is the only way to a bomb.
        raise UnsafePayloadError(f"member {name!r} is compressed; payloads are ZIP_STORED")
    if info.flag_bits & 0x1:
        raise UnsafePayloadError(f"member {name!r} is encrypted")
    if info.file_size > limits.max_member_bytes:
        raise UnsafePayloadError(f"member {name!r} is larger than {limits.max_member_bytes}")


def check_layout(infos: list[zipfile.ZipInfo], limits: PayloadLimits) -> None:
    """Raises UnsafePayloadError unless the members form a payload the agent unpacks."""
    if len(infos) > limits.max_members:
        raise UnsafePayloadError(f"payload has more than {limits.max_members} members")
    names = [i.filename for i in infos]
    folded = {n.casefold() for n in names}
    if len(folded) != len(names):
        raise UnsafePayloadError("payload has duplicate member names")
    for info in infos:
        _check_member(info, limits)
    if sum(i.file_size for i in infos) > limits.max_total_bytes:
        raise UnsafePayloadError(f"payload unpacks to more than {limits.max_total_bytes} bytes")
    models = [n for n in names if n in MODEL_MEMBERS]
    if len(models) != 1:
        raise UnsafePayloadError("payload must hold exactly one of model.onnx / model.tflite")
    if GOLDEN_MEMBER not in names:
        raise UnsafePayloadError("payload has no golden.npz")


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
    """Stream one member to `target` (must not exist); return its SHA-256."""
    digest = hashlib.sha256()
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o640)
    with os.fdopen(fd, "wb") as out, archive.open(info) as src:
        while True:
            block = src.read(_BLOCK)
            if not block:
                break
            written += len(block)
            if written > info.file_size:
                raise UnsafePayloadError(f"member {info.filename!r} is longer than declared")
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if written != info.file_size:
        raise UnsafePayloadError(f"member {info.filename!r} is shorter than declared")
    return digest.hexdigest()


def _golden_first(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    # Check the cheap signed digest before spending I/O on a large model.
    return sorted(infos, key=lambda i: i.filename != GOLDEN_MEMBER)


def extract_payload(
    payload: Path,
    directory: Path,
    *,
    golden_sha256: str,
    limits: PayloadLimits | None = None,
    hook: Callable[[str], None] | None = None,
) -> ExtractedPayload:
    """Unpack `payload` into the empty `directory` and check the golden digest.

    On any failure everything extracted so far is removed again. `hook` is
    called before each member ("extract:<name>"), for crash tests.

    Raises:
        UnsafePayloadError: not a ZIP, or it breaks a rule above.
        GoldenDigestError: golden.npz is not the signed golden set.
        OSError: writing failed (e.g. disk full).
    """
    limits = limits or PayloadLimits()
    if any(directory.iterdir()):
        raise UnsafePayloadError(f"{directory} is not empty")
    written: list[Path] = []
    try:
        try:
            archive = zipfile.ZipFile(payload)
        except (zipfile.BadZipFile, OSError) as e:
            raise UnsafePayloadError(f"payload is not a readable ZIP: {e}") from None
        with archive:
            infos = archive.infolist()
            check_layout(infos, limits)
            if sum(i.file_size for i in infos) > payload.stat().st_size:
                # Stored members cannot add up to more than the archive itself
                # unless entries overlap (the classic overlapping-entry bomb).
                raise UnsafePayloadError("members overlap: they add up to more than the archive")
            for info in _golden_first(infos):
                if hook:
                    hook(f"extract:{info.filename}")
                target = directory / info.filename
                written.append(target)
                try:
                    digest = _copy_member(archive, info, target)
                except zipfile.BadZipFile as e:  # CRC or local-header mismatch
                    raise UnsafePayloadError(f"member {info.filename!r} is corrupt: {e}") from None
                if info.filename == GOLDEN_MEMBER and not hmac.compare_digest(
                    digest, golden_sha256
                ):
                    raise GoldenDigestError("golden.npz differs from the signed golden-set digest")
        _fsync_dir(directory)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    names = {i.filename for i in infos}
    model = next(directory / n for n in MODEL_MEMBERS if n in names)
    tokenizer = directory / TOKENIZER_MEMBER if TOKENIZER_MEMBER in names else None
    return ExtractedPayload(
        directory=directory,
        model=model,
        tokenizer=tokenizer,
        golden=directory / GOLDEN_MEMBER,
        files=tuple(sorted(names)),
    )
