"""The plaintext payload of a bundle: an uncompressed ZIP the agent unpacks.

Layout (flat member names, ZIP_STORED, nothing else):

    model.onnx | model.tflite   the model, renamed
    <name>.data|.bin|...        ONNX external-data files, under the names the model uses
    tokenizer.json              when the version has one (text tasks require it)
    golden.npz                  the golden set the device self-tests with (required)

The members are checked with the agent's own layout rules before encryption, so the
server never signs a payload the agent would refuse to unpack.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tinyfleet_agent.protocol import (
    GOLDEN_MEMBER,
    TOKENIZER_MEMBER,
    PayloadLimits,
    UnsafePayloadError,
    allowed_member,
    check_layout,
)

from compression.archives import materialized
from compression.models import Format, ModelVersion
from compression.pipeline.assess import find_tokenizer
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.onnx_scan import scan_onnx
from compression.storage import local_copy

MODEL_MEMBER: dict[str, str] = {Format.ONNX: "model.onnx", Format.TFLITE: "model.tflite"}
_SUFFIX: dict[str, str] = {Format.ONNX: ".onnx", Format.TFLITE: ".tflite"}


class PayloadError(Exception):
    """The version cannot be packed into a payload devices accept (message says why)."""


@dataclass
class PayloadInfo:
    members: list[str]
    has_tokenizer: bool
    opset_imports: dict[str, int] = field(default_factory=dict)


def fetch_golden(version: ModelVersion, dst: Path) -> None:
    """Copy the version's golden set to `dst`, checking it against the recorded digest.

    Raises:
        PayloadError: no golden set, or its bytes differ from `golden_sha256`.
    """
    if not version.golden_key or not version.golden_sha256:
        raise PayloadError(f"{version} has no golden set; devices must self-test")
    digest = hashlib.sha256()
    with local_copy(version.golden_key) as src, src.open("rb") as f, dst.open("wb") as out:
        while block := f.read(1 << 20):
            digest.update(block)
            out.write(block)
    if not hmac.compare_digest(digest.hexdigest(), version.golden_sha256):
        raise PayloadError(f"the stored golden set of {version} does not match its sha256")


def _model_file(path: Path, fmt: str) -> Path:
    if path.is_file():
        return path
    found = sorted(p for p in path.rglob(f"*{_SUFFIX[fmt]}") if p.is_file())
    if len(found) != 1:
        raise PayloadError(f"expected exactly one {_SUFFIX[fmt]} file in the version's archive")
    return found[0]


def _external_data(model: Path) -> list[tuple[Path, str]]:
    try:
        scan = scan_onnx(model, base_dir=model.parent)
    except InvalidModelError as exc:
        raise PayloadError(str(exc)) from None
    members = []
    for location in scan.external_locations:
        # Devices unpack flat names only: external data must sit beside the model.
        if "/" in location or not allowed_member(location) or location in MODEL_MEMBER.values():
            raise PayloadError(
                f"external data file {location!r} cannot travel in a bundle: it must sit next "
                "to the model and end in .data, .bin, .onnx_data or .weights"
            )
        members.append((model.parent / location, location))
    return members


def _opset(model: Path) -> dict[str, int]:
    try:
        return dict(scan_onnx(model).opset_imports)
    except InvalidModelError as exc:
        raise PayloadError(str(exc)) from None


def build_payload(version: ModelVersion, golden: Path, dst: Path) -> PayloadInfo:
    """Write the payload ZIP of `version` to `dst` (golden set already fetched).

    Raises:
        PayloadError: unsupported format, missing or misplaced files, or a layout the
            agent would refuse.
        OSError: reading the artifact or writing `dst` failed.
    """
    fmt = version.format
    if fmt not in MODEL_MEMBER:
        raise PayloadError(f"{fmt} versions cannot be bundled; export to ONNX or TFLite first")
    with materialized(version) as path:
        model = _model_file(path, fmt)
        members = [(model, MODEL_MEMBER[fmt])]
        opset: dict[str, int] = {}
        if fmt == Format.ONNX:
            members += _external_data(model)
            opset = _opset(model)
        tokenizer = find_tokenizer(model)
        if tokenizer is not None:
            members.append((tokenizer, TOKENIZER_MEMBER))
        members.append((golden, GOLDEN_MEMBER))
        _write_zip(members, dst)
    return PayloadInfo(
        members=[name for _, name in members],
        has_tokenizer=tokenizer is not None,
        opset_imports=opset,
    )


def _write_zip(members: list[tuple[Path, str]], dst: Path) -> None:
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for src, name in members:
            info = zipfile.ZipInfo.from_file(src, arcname=name)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o100644 << 16  # a plain file, whatever the source mode
            with src.open("rb") as f, zf.open(info, "w") as out:
                shutil.copyfileobj(f, out, 1 << 20)
        try:
            check_layout(zf.infolist(), PayloadLimits())
        except UnsafePayloadError as exc:
            raise PayloadError(f"the payload would be refused by devices: {exc}") from None
