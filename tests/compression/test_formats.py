"""Sniffing uploads: accepted formats, refused pickles, malformed files."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.archive import ArchiveLimits, extract_zip
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.formats import PICKLE_MESSAGE, model_root, sniff_upload
from tests.fixtures.tiny_models import build_tiny_hf_dir, zip_dir


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_it_sniffs_plain_onnx(tiny_onnx: Path, limits: ArchiveLimits) -> None:
    assert sniff_upload(tiny_onnx, "Model.ONNX", limits) == "onnx"


def test_it_sniffs_tflite(tiny_tflite: Path, limits: ArchiveLimits) -> None:
    assert sniff_upload(tiny_tflite, "model.tflite", limits) == "tflite"


@pytest.mark.parametrize("top", [None, "tiny-bert"])
def test_it_sniffs_zipped_hf_dir(
    tmp_path: Path, tiny_hf_dir: Path, limits: ArchiveLimits, top: str | None
) -> None:
    archive = zip_dir(tiny_hf_dir, tmp_path / "hf.zip", top=top)
    assert sniff_upload(archive, "hf.zip", limits) == "hf-dir"


def test_it_sniffs_sharded_hf_dir(tmp_path: Path, limits: ArchiveLimits) -> None:
    folder = build_tiny_hf_dir(tmp_path / "sharded", shards=3)
    archive = zip_dir(folder, tmp_path / "sharded.zip", top="m")
    assert sniff_upload(archive, "sharded.zip", limits) == "hf-dir"


def test_it_rejects_index_naming_a_missing_shard(tmp_path: Path, limits: ArchiveLimits) -> None:
    folder = build_tiny_hf_dir(tmp_path / "sharded", shards=2)
    next(folder.glob("model-00002-*.safetensors")).unlink()
    archive = zip_dir(folder, tmp_path / "sharded.zip")
    with pytest.raises(InvalidModelError, match="not in the zip"):
        sniff_upload(archive, "sharded.zip", limits)


def test_it_sniffs_zipped_onnx_with_external_data(
    tmp_path: Path, tiny_onnx_external: Path, limits: ArchiveLimits
) -> None:
    archive = zip_dir(tiny_onnx_external, tmp_path / "ext.zip", top="export")
    assert sniff_upload(archive, "ext.zip", limits) == "onnx"


def test_it_prefers_the_onnx_file_in_an_optimum_style_export(
    tmp_path: Path, tiny_hf_dir: Path, tiny_onnx: Path, limits: ArchiveLimits
) -> None:
    folder = tmp_path / "export"
    shutil.copytree(tiny_hf_dir, folder)
    shutil.copy(tiny_onnx, folder / "model.onnx")
    assert sniff_upload(zip_dir(folder, tmp_path / "e.zip"), "e.zip", limits) == "onnx"


def test_it_tells_plain_onnx_with_external_data_to_upload_a_zip(
    tiny_onnx_external: Path, limits: ArchiveLimits
) -> None:
    with pytest.raises(InvalidModelError, match=r"upload the \.zip"):
        sniff_upload(tiny_onnx_external / "model.onnx", "model.onnx", limits)


def test_it_rejects_zipped_onnx_missing_its_data(
    tmp_path: Path, tiny_onnx_external: Path, limits: ArchiveLimits
) -> None:
    archive = write_zip(
        tmp_path / "nodata.zip", {"m/model.onnx": (tiny_onnx_external / "model.onnx").read_bytes()}
    )
    with pytest.raises(InvalidModelError, match="not in the zip"):
        sniff_upload(archive, "nodata.zip", limits)


def test_it_rejects_an_empty_file(tmp_path: Path, limits: ArchiveLimits) -> None:
    path = tmp_path / "empty"
    path.touch()
    with pytest.raises(InvalidModelError, match="empty"):
        sniff_upload(path, "model.onnx", limits)


@pytest.mark.parametrize("filename", ["model.h5", "model.txt", "model", "model.tar.gz"])
def test_it_rejects_unknown_extensions(
    tiny_onnx: Path, limits: ArchiveLimits, filename: str
) -> None:
    with pytest.raises(InvalidModelError, match=r"not accepted\. Upload a \.onnx, \.tflite"):
        sniff_upload(tiny_onnx, filename, limits)


@pytest.mark.parametrize("filename", ["model.onnx", "model.tflite"])
def test_it_rejects_random_bytes_with_model_extensions(
    tmp_path: Path, limits: ArchiveLimits, filename: str
) -> None:
    path = tmp_path / "random"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 2048, np.uint8).tobytes())
    with pytest.raises(InvalidModelError, match=r"not a valid ONNX|not a TensorFlow Lite"):
        sniff_upload(path, filename, limits)


def test_it_guides_bare_safetensors_uploads_to_a_zip(
    tiny_hf_dir: Path, limits: ArchiveLimits
) -> None:
    with pytest.raises(InvalidModelError, match=r"Zip the Hugging Face folder"):
        sniff_upload(tiny_hf_dir / "model.safetensors", "model.safetensors", limits)


def test_it_does_not_mistake_a_tflite_root_offset_for_pickle_magic(
    tmp_path: Path, tiny_tflite: Path, limits: ArchiveLimits
) -> None:
    # Root offset 0x280 is stored as 80 02 00 00, the same bytes as pickle protocol 2.
    original = tiny_tflite.read_bytes()
    pad = 0x280 - int.from_bytes(original[:4], "little")  # flatbuffer offsets are relative
    data = bytearray(bytes(pad) + original)
    data[0:8] = (0x280).to_bytes(4, "little") + b"TFL3"
    assert data[:2] == b"\x80\x02"
    path = tmp_path / "shifted.tflite"
    path.write_bytes(bytes(data))
    assert sniff_upload(path, "model.tflite", limits) == "tflite"


def test_it_rejects_tflite_with_an_out_of_range_root(
    tmp_path: Path, tiny_tflite: Path, limits: ArchiveLimits
) -> None:
    data = bytearray(tiny_tflite.read_bytes())
    data[0:4] = (len(data) + 64).to_bytes(4, "little")
    path = tmp_path / "bad.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidModelError, match="root table"):
        sniff_upload(path, "bad.tflite", limits)


def torch_style_checkpoint() -> bytes:
    """What torch.save writes: a zip around archive/data.pkl (built without torch)."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0]}, protocol=2))
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


PICKLE = pickle.dumps({"weight": [1.0, 2.0]}, protocol=4)
CONFIG = json.dumps({"model_type": "bert"}).encode()


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("model.pt", PICKLE),
        ("model.pth", torch_style_checkpoint()),
        ("weights.pkl", PICKLE),
        ("pytorch_model.bin", PICKLE),
        ("model.ckpt", PICKLE),
        ("model.onnx", PICKLE),  # pickle magic whatever the extension says
        ("model.tflite", pickle.dumps([1], protocol=2)),
        ("model.onnx", torch_style_checkpoint()),
    ],
)
def test_it_refuses_pickles_with_guidance(
    tmp_path: Path, limits: ArchiveLimits, filename: str, content: bytes
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError) as info:
        sniff_upload(path, filename, limits)
    assert str(info.value) == PICKLE_MESSAGE
    assert "arbitrary code" in str(info.value) and "safetensors" in str(info.value)


@pytest.mark.parametrize(
    "members",
    [
        {"m/config.json": CONFIG, "m/pytorch_model.bin": PICKLE},
        {"archive/data.pkl": PICKLE, "archive/version": b"3"},
        {"m/config.json": CONFIG, "m/optimizer.pt": PICKLE},
        {"m/model.onnx": b"x", "m/training_args.bin": PICKLE},  # pickle found by magic
        {"m/nested.bin": torch_style_checkpoint()},
    ],
)
def test_it_refuses_zips_holding_pickles(
    tmp_path: Path, limits: ArchiveLimits, members: dict[str, bytes]
) -> None:
    archive = write_zip(tmp_path / "up.zip", members)
    with pytest.raises(InvalidModelError, match="arbitrary code"):
        sniff_upload(archive, "up.zip", limits)


def test_it_refuses_a_zip_with_pickles_next_to_safetensors(
    tmp_path: Path, tiny_hf_dir: Path, limits: ArchiveLimits
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(tiny_hf_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(PICKLE)
    with pytest.raises(InvalidModelError, match="Remove the pickle files"):
        sniff_upload(zip_dir(folder, tmp_path / "hf.zip"), "hf.zip", limits)


def test_it_accepts_onnx_external_data_named_bin(tmp_path: Path, limits: ArchiveLimits) -> None:
    from tests.fixtures.tiny_models import build_tiny_bert_onnx

    folder = tmp_path / "m"
    build_tiny_bert_onnx(folder / "model.onnx", external_data=True)
    assert sniff_upload(zip_dir(folder, tmp_path / "m.zip"), "m.zip", limits) == "onnx"
    # Renamed data file (.bin) is not mistaken for a pickle: its bytes are floats.
    data = (folder / "model.onnx.data").read_bytes()
    assert data[:1] != b"\x80"


def test_it_rejects_a_zip_with_two_onnx_files(
    tmp_path: Path, tiny_onnx: Path, limits: ArchiveLimits
) -> None:
    onnx_bytes = tiny_onnx.read_bytes()
    archive = write_zip(tmp_path / "two.zip", {"a.onnx": onnx_bytes, "b/b.onnx": onnx_bytes})
    with pytest.raises(
        InvalidModelError, match=r"2 \.onnx files .*upload each graph as its own model"
    ):
        sniff_upload(archive, "two.zip", limits)


@pytest.mark.parametrize(
    "members",
    [
        {"readme.txt": b"hello"},
        {"m/config.json": CONFIG},  # no weights
        {"m/model.safetensors": b"x"},  # no config
    ],
)
def test_it_rejects_zips_without_a_model(
    tmp_path: Path, limits: ArchiveLimits, members: dict[str, bytes]
) -> None:
    archive = write_zip(tmp_path / "none.zip", members)
    with pytest.raises(InvalidModelError, match="holds no model"):
        sniff_upload(archive, "none.zip", limits)


def test_it_rejects_a_config_that_is_not_json(tmp_path: Path, limits: ArchiveLimits) -> None:
    archive = write_zip(
        tmp_path / "bad.zip", {"config.json": b"{nope", "model.safetensors": b"x" * 16}
    )
    with pytest.raises(InvalidModelError, match=r"config\.json is not valid JSON"):
        sniff_upload(archive, "bad.zip", limits)


def test_it_finds_the_model_root_in_an_extracted_zip(
    tmp_path: Path, tiny_hf_dir: Path, tiny_onnx_external: Path, limits: ArchiveLimits
) -> None:
    hf_zip = zip_dir(tiny_hf_dir, tmp_path / "hf.zip", top="outer")
    with zipfile.ZipFile(hf_zip, "a") as zf:  # macOS Finder adds these
        zf.writestr("__MACOSX/outer/._config.json", b"junk")
        zf.writestr(".DS_Store", b"junk")
    extract_zip(hf_zip, tmp_path / "hf", limits)
    assert model_root(tmp_path / "hf") == tmp_path / "hf" / "outer"

    extract_zip(zip_dir(tiny_onnx_external, tmp_path / "o.zip", top="x"), tmp_path / "o", limits)
    assert model_root(tmp_path / "o") == tmp_path / "o" / "x" / "model.onnx"
