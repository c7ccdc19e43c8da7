"""Decide what kind of model an upload is, refusing unsafe or unusable files.

Accepted uploads: a plain `.onnx` (weights inline), a `.tflite` flatbuffer, or a
`.zip` holding either one `.onnx` with its external data, or a Hugging Face
folder (config.json + safetensors weights, tokenizer optional). Pickles and
PyTorch checkpoints are refused outright: loading them can run arbitrary code.
"""

from __future__ import annotations

import json
import posixpath
import struct
import zipfile
from pathlib import Path
from typing import Any

from compression.pipeline.archive import CORRUPT_ZIP_ERRORS, ArchiveLimits, check_zip
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.onnx_scan import scan_onnx, scan_onnx_stream

ONNX, TFLITE, HF_DIR = "onnx", "tflite", "hf-dir"
ACCEPTED = ".onnx, .tflite or .zip (an ONNX model with its data, or a Hugging Face folder)"
PICKLE_MESSAGE = (
    "PyTorch pickle files are not accepted because loading them can run arbitrary code; "
    "upload model.safetensors in a zipped Hugging Face directory, or export to ONNX."
)
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".mar")
_PICKLE_MEMBER_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_HF_INDEX = "model.safetensors.index.json"
_MAX_JSON = 16 * 1024 * 1024
_JUNK = ("__MACOSX", ".DS_Store")


def _is_pickle(head: bytes) -> bool:
    # Pickle protocols 2-5 start with PROTO (0x80) then the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_junk(name: str) -> bool:
    return name.split("/", 1)[0] == _JUNK[0] or posixpath.basename(name) == _JUNK[1]


def sniff_upload(path: Path, filename: str, limits: ArchiveLimits) -> str:
    """Return the model format of an upload: "onnx", "tflite" or "hf-dir".

    filename is the name the user gave the file (its extension is trusted only
    together with the content). Zips are checked with check_zip, not extracted.

    Raises:
        InvalidModelError: empty file, unknown extension, a pickle or PyTorch
            checkpoint, a malformed model, a plain .onnx that needs external
            data, or a zip that holds no single recognisable model.
    """
    size = path.stat().st_size
    if size == 0:
        raise InvalidModelError(f"The uploaded file is empty. Upload a {ACCEPTED}.")
    with path.open("rb") as fh:
        head = fh.read(8)
    suffix = Path(filename).suffix.lower()
    # A TFLite root offset can begin 0x80 0x02 too; its identifier settles it.
    if (_is_pickle(head) and head[4:8] != b"TFL3") or suffix in _PICKLE_SUFFIXES:
        raise InvalidModelError(PICKLE_MESSAGE)
    if suffix == ".zip":
        return _sniff_zip(path, limits)
    if head[:4] in _ZIP_MAGIC:
        # torch.save writes a zip around data.pkl; never accept it as a model.
        if _zip_has_pickle(path):
            raise InvalidModelError(PICKLE_MESSAGE)
        raise InvalidModelError(
            f"{filename!r} is a zip archive, not a single model; name it .zip to upload it."
        )
    if suffix == ".onnx":
        _check_plain_onnx(path)
        return ONNX
    if suffix == ".tflite":
        check_tflite_header(path)
        return TFLITE
    if suffix == ".safetensors":
        raise InvalidModelError(
            "A bare .safetensors file has no model config. Zip the Hugging Face folder "
            "(config.json, model.safetensors, tokenizer files) and upload the .zip."
        )
    raise InvalidModelError(
        f"Files ending in {suffix or '(no extension)'!r} are not accepted. Upload a {ACCEPTED}."
    )


def _check_plain_onnx(path: Path) -> None:
    scan = scan_onnx(path)
    if scan.external_locations:
        names = ", ".join(scan.external_locations[:3])
        raise InvalidModelError(
            f"This ONNX model keeps its weights in external data files ({names}), which a "
            "single .onnx upload cannot carry. Zip the folder holding the .onnx file and its "
            "data files and upload the .zip."
        )


def check_tflite_header(path: Path) -> None:
    """Check the TFLite flatbuffer identifier and that the root table is in bounds.

    Raises:
        InvalidModelError: the file is not a TFLite flatbuffer.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if size < 16 or head[4:8] != b"TFL3":
            raise InvalidModelError(
                "The file is not a TensorFlow Lite model (no 'TFL3' identifier). "
                "Convert it with the TFLite/LiteRT converter and upload the .tflite file."
            )
        (root,) = struct.unpack("<I", head[:4])
        if root < 8 or root % 4 or root + 4 > size:
            raise InvalidModelError("The TFLite file is corrupt: its root table is out of range.")
        fh.seek(root)
        (vtable_back,) = struct.unpack("<i", fh.read(4))
        vtable = root - vtable_back
        if vtable < 0 or vtable + 4 > size:
            raise InvalidModelError("The TFLite file is corrupt: its root table is out of range.")


def _zip_has_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(_is_pickle_member(zf, n) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_pickle_member(zf: zipfile.ZipFile, name: str) -> bool:
    base = posixpath.basename(name).lower()
    if base == "data.pkl" or base.endswith(_PICKLE_MEMBER_SUFFIXES):
        return True
    if base.startswith("pytorch_model") and base.endswith(".bin"):
        return True
    if base.endswith(".bin") and not name.endswith("/"):
        # Other .bin files may be ONNX external data: look at their first bytes.
        with zf.open(name) as member:
            head = member.read(4)
        return _is_pickle(head) or head in _ZIP_MAGIC
    return False


def _root_prefix(files: list[str]) -> str:
    """The folder prefix ('', 'a/' or 'a/b/') that every real file shares."""
    rest = [n for n in files if not _is_junk(n)]
    prefix = ""
    while rest and all("/" in n for n in rest):
        tops = {n.split("/", 1)[0] for n in rest}
        if len(tops) != 1:
            break
        prefix += f"{tops.pop()}/"
        rest = [n.split("/", 1)[1] for n in rest]
    return prefix


def _sniff_zip(path: Path, limits: ArchiveLimits) -> str:
    check_zip(path, limits)
    try:
        return _classify_zip(path)
    except InvalidModelError:
        raise
    except CORRUPT_ZIP_ERRORS as exc:
        raise InvalidModelError(
            f"The zip archive is corrupt ({exc}). Re-create it and upload it again."
        ) from exc


def _classify_zip(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename.rstrip("/"): i for i in zf.infolist() if not i.is_dir()}
        files = [n for n in infos if not _is_junk(n)]
        if any(_is_pickle_member(zf, n) for n in files):
            raise InvalidModelError(
                PICKLE_MESSAGE + " Remove the pickle files (e.g. pytorch_model.bin) from the zip."
            )
        onnx_files = [n for n in files if n.lower().endswith(".onnx")]
        if len(onnx_files) == 1:
            _check_zipped_onnx(zf, infos, onnx_files[0])
            return ONNX
        prefix = _root_prefix(files)
        if f"{prefix}config.json" in infos and _has_safetensors(zf, infos, prefix):
            _read_json(zf, f"{prefix}config.json")
            return HF_DIR
    if len(onnx_files) > 1:
        names = ", ".join(sorted(Path(f).name for f in onnx_files)[:4])
        raise InvalidModelError(
            f"The zip holds {len(onnx_files)} .onnx files ({names}); an encoder-decoder pair "
            "or a pipeline of graphs is several models: upload each graph as its own model, "
            "one per zip with its external data and tokenizer files."
        )
    raise InvalidModelError(
        "The zip holds no model we can use. It must contain either one .onnx file (with its "
        "external data files), or a Hugging Face folder with config.json and "
        "model.safetensors (or sharded safetensors with model.safetensors.index.json). "
        "Upload .tflite files directly, without a zip."
    )


def _check_zipped_onnx(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], name: str) -> None:
    info = infos[name]
    with zf.open(info) as member:
        scan = scan_onnx_stream(member, info.file_size)
    folder = posixpath.dirname(name)
    for location, needed in scan.external_min_sizes.items():
        member_name = posixpath.join(folder, location)
        data = infos.get(member_name)
        if data is None:
            raise InvalidModelError(
                f"The ONNX model needs the external data file {location!r}, which is not in "
                "the zip. Zip the .onnx file together with its data files, in the same folder."
            )
        if data.file_size < needed:
            raise InvalidModelError(
                f"The external data file {location!r} is shorter than the model says "
                f"({needed} bytes needed). Re-save the model and upload it again."
            )


def _has_safetensors(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], prefix: str) -> bool:
    if f"{prefix}model.safetensors" in infos:
        return True
    index_name = f"{prefix}{_HF_INDEX}"
    if index_name not in infos:
        return False
    index = _read_json(zf, index_name)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelError(f"{_HF_INDEX} has no weight_map; re-save the model.")
    for shard in shard_names(weight_map):
        if f"{prefix}{shard}" not in infos:
            raise InvalidModelError(
                f"{_HF_INDEX} names the shard {shard!r}, which is not in the zip. "
                "Zip the whole model folder."
            )
    return True


def shard_names(weight_map: dict[Any, Any]) -> list[str]:
    """The distinct shard file names of a safetensors index's weight_map.

    Raises:
        InvalidModelError: a shard name is not a plain file name.
    """
    names = sorted({str(v) for v in weight_map.values()})
    for name in names:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise InvalidModelError(
                f"{_HF_INDEX} names the shard {name[:100]!r}, which is not a plain file name. "
                "Re-save the model with save_pretrained."
            )
    return names


def _read_json(zf: zipfile.ZipFile, name: str) -> dict[str, object]:
    info = zf.getinfo(name)
    if info.file_size > _MAX_JSON:
        raise InvalidModelError(f"{posixpath.basename(name)} is too large to be a config file.")
    try:
        data = json.loads(zf.read(info))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(
            f"{posixpath.basename(name)} is not valid JSON ({exc}); re-save the model."
        ) from exc
    if not isinstance(data, dict):
        raise InvalidModelError(f"{posixpath.basename(name)} must hold a JSON object.")
    return data


def model_root(extract_dir: Path) -> Path:
    """Find the model inside an extracted zip.

    Returns the single .onnx file when the tree holds exactly one (its external
    data sits beside it), otherwise the model folder from find_model_dir.

    Raises:
        InvalidModelError: the folder is empty.
    """
    onnx_files = [p for p in extract_dir.rglob("*.onnx") if p.is_file() and not _junk_path(p)]
    if len(onnx_files) == 1:
        return onnx_files[0]
    return find_model_dir(extract_dir)


def find_model_dir(extract_dir: Path) -> Path:
    """Descend through single top-level folders (ignoring macOS junk) to the model folder.

    Raises:
        InvalidModelError: the folder is empty.
    """
    root = extract_dir
    while True:
        entries = [p for p in root.iterdir() if p.name not in _JUNK]
        if not entries:
            raise InvalidModelError("The zip archive is empty. Zip the model folder.")
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            root = entries[0]
            continue
        return root


def _junk_path(path: Path) -> bool:
    return any(part in _JUNK for part in path.parts)
