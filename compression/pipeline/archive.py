"""Safe handling of uploaded zip archives.

An uploaded zip is untrusted: its names may point outside the extraction folder,
its declared sizes may lie, and its members may be symlinks or encrypted. Every
archive is checked from its central directory before anything is extracted, and
extraction re-counts the bytes it really writes.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from compression.pipeline.errors import InvalidModelError

MiB = 1024 * 1024
GiB = 1024 * MiB

# Methods zipfile can decompress in the standard library; anything else (e.g.
# zstd, PPMd, AES) would fail half-way through extraction.
_ALLOWED_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_LOCAL_HEADER_SIZE = 30
# What zipfile and its decompressors raise on damaged member data.
CORRUPT_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError)
_CHUNK = MiB


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied to every uploaded archive (defaults suit models up to ~8 GB)."""

    max_members: int = 10_000
    max_total_uncompressed: int = 8 * GiB
    max_member_uncompressed: int = 8 * GiB
    # Compression ratio cap, applied per member and to the whole archive, only to
    # sizes above ratio_threshold: tiny JSON files legitimately compress 1000x.
    max_ratio: float = 200.0
    ratio_threshold: int = MiB
    max_name_length: int = 1024
    max_depth: int = 32
    # The central directory is read into memory by zipfile; cap it before that.
    max_central_directory: int = 64 * MiB


def _fail(name: str, problem: str) -> InvalidModelError:
    return InvalidModelError(
        f"The zip archive was rejected: entry {name!r} {problem}. "
        "Upload a plain zip of the model folder (no links, no encryption)."
    )


def _read_central_directory_size(path: Path) -> tuple[int, int]:
    """Return (entry count, central directory bytes) from the end records.

    Raises:
        InvalidModelError: the file has no zip end-of-central-directory record.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        tail_len = min(size, 22 + 65_535)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        pos = tail.rfind(_EOCD_SIG)
        if pos < 0 or len(tail) - pos < 22:
            raise InvalidModelError(
                "The upload is not a valid zip archive (no end-of-archive record). "
                "Create it with `zip -r model.zip model_dir` and upload it again."
            )
        entries, cd_size = struct.unpack_from("<HI", tail, pos + 10)
        locator = pos - 20
        # Zip64 archives store 0xFFFF / 0xFFFFFFFF here and the real numbers in
        # the zip64 end record, which the locator points at.
        if locator >= 0 and tail[locator : locator + 4] == _EOCD64_LOCATOR_SIG:
            (rec_offset,) = struct.unpack_from("<Q", tail, locator + 8)
            if rec_offset + 56 > size:
                raise InvalidModelError("The zip archive is truncated or corrupt.")
            fh.seek(rec_offset)
            rec = fh.read(56)
            if rec[:4] != _EOCD64_SIG:
                raise InvalidModelError("The zip archive is truncated or corrupt.")
            entries, cd_size = struct.unpack_from("<QQ", rec, 32)
    return int(entries), int(cd_size)


def _check_name(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str:
    """Validate one member name and return it without a trailing slash.

    Raises:
        InvalidModelError: the name could escape the extraction folder.
    """
    name = info.filename
    if info.orig_filename != name:
        # zipfile silently cuts names at NUL; the raw name differs from it then.
        raise _fail(name, "has a NUL byte or a backslash in its name")
    if not name or len(name) > limits.max_name_length:
        raise _fail(name[:80], "has an empty or overlong name")
    if "\\" in name:
        raise _fail(name, "uses backslashes, which can escape the folder on Windows")
    if name.startswith("/") or _DRIVE_RE.match(name) or ":" in name:
        raise _fail(name, "is an absolute path or names a drive")
    stripped = name[:-1] if name.endswith("/") else name
    parts = stripped.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _fail(name, "has '..', '.' or empty path parts (path traversal)")
    if any(ord(ch) < 32 for ch in name):
        raise _fail(name, "has control characters in its name")
    if len(parts) > limits.max_depth:
        raise _fail(name, "is nested too deeply")
    return stripped


def _check_kind(info: zipfile.ZipInfo) -> None:
    """Refuse encrypted members, odd compression and anything but files/dirs.

    Raises:
        InvalidModelError: the member is encrypted, a symlink or a device.
    """
    if info.flag_bits & 0x1 or info.flag_bits & 0x40:
        raise _fail(info.filename, "is encrypted")
    if info.compress_type not in _ALLOWED_METHODS:
        raise _fail(info.filename, f"uses unsupported compression {info.compress_type}")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        what = "is a symbolic link" if kind == stat.S_IFLNK else "is not a regular file"
        raise _fail(info.filename, what)


def _check_ratio(label: str, uncompressed: int, compressed: int, limits: ArchiveLimits) -> None:
    big = uncompressed > limits.ratio_threshold
    if big and uncompressed > limits.max_ratio * max(compressed, 1):
        raise _fail(label, "compresses suspiciously well (zip bomb)")


def _check_overlap(infos: list[zipfile.ZipInfo], start_dir: int) -> None:
    """Refuse members whose data overlaps (the Fifield non-recursive zip bomb).

    Raises:
        InvalidModelError: two members share bytes or run into the directory.
    """
    ordered = sorted(infos, key=lambda i: i.header_offset)
    ends = [i.header_offset for i in ordered[1:]] + [start_dir]
    for info, next_start in zip(ordered, ends, strict=True):
        if info.header_offset + _LOCAL_HEADER_SIZE + info.compress_size > next_start:
            raise _fail(info.filename, "overlaps another entry (zip bomb)")


def check_zip(path: Path, limits: ArchiveLimits) -> list[str]:
    """Check an archive without extracting it and return its member names.

    Names are returned without trailing slashes, directories included.

    Raises:
        InvalidModelError: the file is not a zip, or it breaks a rule: path
            traversal, absolute or drive paths, backslashes, symlinks,
            duplicates, encryption, too many members, or a bomb by declared
            sizes, compression ratio or overlapping members.
    """
    entries, cd_size = _read_central_directory_size(path)
    if entries > limits.max_members:
        raise InvalidModelError(
            f"The zip archive has {entries} entries; at most {limits.max_members} are "
            "accepted. Zip only the model folder."
        )
    if cd_size > limits.max_central_directory:
        raise InvalidModelError("The zip archive's directory is too large to be a model.")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            start_dir = int(getattr(zf, "start_dir", path.stat().st_size))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidModelError(
            f"The upload is not a valid zip archive ({exc}). "
            "Create it with `zip -r model.zip model_dir` and upload it again."
        ) from exc
    if len(infos) > limits.max_members:
        raise InvalidModelError(f"The zip archive has more than {limits.max_members} entries.")
    return _check_members(infos, start_dir, limits)


def _check_members(
    infos: list[zipfile.ZipInfo], start_dir: int, limits: ArchiveLimits
) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    files: set[str] = set()
    parents: set[str] = set()
    total = total_compressed = 0
    for info in infos:
        name = _check_name(info, limits)
        _check_kind(info)
        folded = name.casefold()
        if folded in seen:
            raise _fail(name, "appears twice (duplicate names can overwrite files)")
        seen.add(folded)
        if not info.is_dir():
            files.add(folded)
        parts = folded.split("/")
        parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if info.file_size > limits.max_member_uncompressed:
            raise _fail(name, f"is larger than {limits.max_member_uncompressed} bytes")
        _check_ratio(name, info.file_size, info.compress_size, limits)
        total += info.file_size
        total_compressed += info.compress_size
        if total > limits.max_total_uncompressed:
            raise InvalidModelError(
                "The zip archive expands to more than "
                f"{limits.max_total_uncompressed // GiB} GiB; upload a smaller model."
            )
        names.append(name)
    clash = files & parents
    if clash:
        raise _fail(sorted(clash)[0], "is both a file and a folder")
    _check_ratio("(whole archive)", total, total_compressed, limits)
    _check_overlap(infos, start_dir)
    return names


def _prepare_dest(dest_dir: Path) -> Path:
    """Create dest_dir (or accept an empty one) and return its resolved path.

    Raises:
        OSError: dest_dir is a non-empty folder or cannot be created.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    if any(dest_dir.iterdir()):
        raise OSError(f"extraction folder {dest_dir} is not empty")
    return dest_dir.resolve(strict=True)


def _clear(dest: Path) -> None:
    # Nothing partial is left behind: remove whatever this extraction wrote.
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def extract_zip(path: Path, dest_dir: Path, limits: ArchiveLimits) -> None:
    """Check then extract an archive into dest_dir, which must be new or empty.

    Bytes are counted as they are written, so a member whose header lies about
    its size cannot fill the disk. Files are created with O_EXCL|O_NOFOLLOW and
    mode 0644 whatever the archive says. On failure dest_dir is emptied again.

    Raises:
        InvalidModelError: the archive fails check_zip, or its data does not
            match its headers (lying sizes, bad CRC, corrupt streams).
        OSError: dest_dir is not empty or the disk write failed.
    """
    names = check_zip(path, limits)
    dest = _prepare_dest(dest_dir)
    try:
        with zipfile.ZipFile(path) as zf:
            budget = limits.max_total_uncompressed
            for info, name in zip(zf.infolist(), names, strict=True):
                target = dest / name
                if not target.resolve().is_relative_to(dest):
                    raise _fail(name, "would be written outside the extraction folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                budget -= _extract_member(zf, info, target, budget)
    except InvalidModelError:
        _clear(dest)
        raise
    except CORRUPT_ZIP_ERRORS as exc:
        _clear(dest)
        raise InvalidModelError(
            f"The zip archive is corrupt ({exc}). Re-create it and upload it again."
        ) from exc
    except BaseException:
        _clear(dest)
        raise


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int) -> int:
    """Stream one member to target and return the bytes written.

    Raises:
        InvalidModelError: the member produced more or fewer bytes than declared.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    written = 0
    fd = os.open(target, flags, 0o644)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size or written > budget:
                raise _fail(info.filename, "holds more data than its header says (zip bomb)")
            out.write(chunk)
    if written != info.file_size:
        raise _fail(info.filename, "holds less data than its header says (corrupt)")
    return written
