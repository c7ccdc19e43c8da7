"""Attacks on uploaded zip archives: traversal, links, bombs and lying headers."""

from __future__ import annotations

import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.archive import ArchiveLimits, check_zip, extract_zip
from compression.pipeline.errors import InvalidModelError

CENTRAL_SIG = b"PK\x01\x02"


def make_zip(path: Path, members: dict[str, bytes], *, deflate: bool = True) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def central_entries(data: bytes) -> list[int]:
    """Offsets of every central-directory header in a zip's bytes."""
    offsets, pos = [], data.find(CENTRAL_SIG)
    while pos >= 0:
        offsets.append(pos)
        pos = data.find(CENTRAL_SIG, pos + 4)
    return offsets


def patch_central(path: Path, index: int, field_offset: int, fmt: str, value: int) -> None:
    data = bytearray(path.read_bytes())
    entry = central_entries(bytes(data))[index]
    struct.pack_into(fmt, data, entry + field_offset, value)
    path.write_bytes(bytes(data))


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_it_extracts_a_plain_zip(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = make_zip(tmp_path / "ok.zip", {"m/config.json": b"{}", "m/w.bin": b"x" * 10})
    assert check_zip(archive, limits) == ["m/config.json", "m/w.bin"]
    dest = tmp_path / "out"
    extract_zip(archive, dest, limits)
    assert (dest / "m" / "w.bin").read_bytes() == b"x" * 10
    assert stat.S_IMODE((dest / "m" / "w.bin").stat().st_mode) & 0o111 == 0


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "model/../../evil.txt",
        "/etc/passwd",
        "C:/Windows/evil.dll",
        "C:evil.txt",
        "..\\..\\evil.txt",
        "model\\..\\..\\evil.txt",
        "model/./config.json",
        "model//config.json",
        "model/file.txt:stream",
    ],
)
def test_it_rejects_zip_slip_entries(tmp_path: Path, limits: ArchiveLimits, name: str) -> None:
    archive = make_zip(tmp_path / "slip.zip", {"ok.txt": b"ok", name: b"pwned"})
    with pytest.raises(InvalidModelError, match="rejected"):
        check_zip(archive, limits)
    with pytest.raises(InvalidModelError):
        extract_zip(archive, tmp_path / "out", limits)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_it_rejects_names_with_nul_bytes(tmp_path: Path, limits: ArchiveLimits) -> None:
    # zipfile silently truncates names at NUL, so craft the raw bytes.
    archive = make_zip(tmp_path / "nul.zip", {"model.onnxXevil": b"x"})
    archive.write_bytes(archive.read_bytes().replace(b"model.onnxXevil", b"model.onnx\0evil"))
    with pytest.raises(InvalidModelError, match="NUL"):
        check_zip(archive, limits)


def test_it_rejects_symlink_members(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("model/weights.bin")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidModelError, match="symbolic link"):
        check_zip(archive, limits)


@pytest.mark.parametrize(
    "names",
    [("a.txt", "a.txt"), ("Model/A.txt", "model/a.txt"), ("m/a", "m/a/b.txt")],
)
def test_it_rejects_duplicate_or_clashing_names(
    tmp_path: Path, limits: ArchiveLimits, names: tuple[str, str]
) -> None:
    archive = tmp_path / "dup.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we want
        for i, name in enumerate(names):
            zf.writestr(name, f"content {i}")
    with pytest.raises(InvalidModelError, match=r"twice|both a file and a folder"):
        check_zip(archive, limits)


def test_it_rejects_encrypted_members(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = make_zip(tmp_path / "enc.zip", {"model.onnx": b"secret"})
    patch_central(archive, 0, 8, "<H", 0x1)  # general purpose flag: encrypted
    with pytest.raises(InvalidModelError, match="encrypted"):
        check_zip(archive, limits)


def test_it_rejects_zip_bomb_by_ratio(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = make_zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(50 * 1024 * 1024)})
    assert archive.stat().st_size < 100_000
    with pytest.raises(InvalidModelError, match="zip bomb"):
        check_zip(archive, limits)


def test_it_rejects_zip_bomb_by_total_ratio(tmp_path: Path) -> None:
    # Each member stays under the per-member threshold; together they do not.
    members = {f"part{i}.bin": bytes(900 * 1024) for i in range(4)}
    archive = make_zip(tmp_path / "many.zip", members)
    with pytest.raises(InvalidModelError, match="whole archive"):
        check_zip(archive, ArchiveLimits())


def test_it_rejects_bomb_by_declared_total_size(tmp_path: Path) -> None:
    members = {f"w{i}.bin": random_bytes(400_000, i) for i in range(3)}
    archive = make_zip(tmp_path / "big.zip", members)
    small = ArchiveLimits(max_total_uncompressed=1_000_000)
    with pytest.raises(InvalidModelError, match="expands to more than"):
        check_zip(archive, small)


def test_it_rejects_too_many_members(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(6)})
    with pytest.raises(InvalidModelError, match="6 entries"):
        check_zip(archive, ArchiveLimits(max_members=5))


def test_it_rejects_bomb_with_lying_header(tmp_path: Path, limits: ArchiveLimits) -> None:
    # 20 MB of zeros whose central directory claims 1000 bytes: the declared
    # ratio looks harmless, so only counting the real bytes can stop it.
    archive = make_zip(tmp_path / "liar.zip", {"weights.bin": bytes(20 * 1024 * 1024)})
    patch_central(archive, 0, 24, "<I", 1000)
    assert check_zip(archive, limits) == ["weights.bin"]
    dest = tmp_path / "out"
    with pytest.raises(InvalidModelError):
        extract_zip(archive, dest, limits)
    assert list(dest.iterdir()) == []


def test_it_never_writes_more_than_the_header_declares(
    tmp_path: Path, limits: ArchiveLimits
) -> None:
    # Even with a forged CRC that matches the declared prefix, extraction
    # stops at the declared size: the bomb is defused, not expanded.
    archive = make_zip(tmp_path / "liar.zip", {"weights.bin": bytes(20 * 1024 * 1024)})
    patch_central(archive, 0, 24, "<I", 1000)
    patch_central(archive, 0, 16, "<I", zlib.crc32(bytes(1000)))
    dest = tmp_path / "out"
    extract_zip(archive, dest, limits)
    assert (dest / "weights.bin").stat().st_size == 1000


def test_it_rejects_overlapping_members(tmp_path: Path, limits: ArchiveLimits) -> None:
    # The non-recursive zip bomb points many entries at the same compressed data.
    archive = make_zip(tmp_path / "overlap.zip", {"a.bin": b"a" * 100, "b.bin": b"b" * 100})
    patch_central(archive, 1, 42, "<I", 0)  # b.bin's local header offset := a.bin's
    with pytest.raises(InvalidModelError, match="overlaps"):
        check_zip(archive, limits)


def test_it_rejects_corrupt_member_data(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = make_zip(tmp_path / "crc.zip", {"w.bin": random_bytes(5000)}, deflate=False)
    data = bytearray(archive.read_bytes())
    data[100] ^= 0xFF  # inside the stored data: CRC no longer matches
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(InvalidModelError, match="corrupt"):
        extract_zip(archive, dest, limits)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04" + bytes(40), b""])
def test_it_rejects_files_that_are_not_zips(
    tmp_path: Path, limits: ArchiveLimits, content: bytes
) -> None:
    path = tmp_path / "fake.zip"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError, match="not a valid zip"):
        check_zip(path, limits)


def test_it_refuses_a_non_empty_destination(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = make_zip(tmp_path / "ok.zip", {"a.txt": b"a"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "existing").write_text("keep me")
    with pytest.raises(OSError, match="not empty"):
        extract_zip(archive, dest, limits)
    assert (dest / "existing").read_text() == "keep me"
