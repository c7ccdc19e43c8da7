"""Recipes ``onnx-int8-dynamic``, ``onnx-int8-static`` and ``onnx-fp16``.

Thin, typed wrappers around onnxruntime.quantization and onnxconverter-common
that add what a job needs: input checks with clear errors, calibration data
handling, a log of what was done and the output's size.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compression.pipeline.inspect import already_quantized
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress
from compression.pipeline.textdata import (
    DatasetError,
    default_sentences,
    encode,
    load_jsonl,
    load_npz,
)

__all__ = [
    "DynamicInt8Params",
    "Fp16Params",
    "QuantizeError",
    "StaticInt8Params",
    "calibration_feeds",
    "convert_fp16",
    "model_input_names",
    "op_histogram",
    "preprocess",
    "quantize_int8_dynamic",
    "quantize_int8_static",
    "resolve_onnx",
]

log = logging.getLogger(__name__)


class QuantizeError(ValueError):
    """The model cannot be quantized with the requested parameters."""


@dataclass(frozen=True)
class DynamicInt8Params:
    # Per-channel weights are the safe default: per-tensor loses ~3 points of
    # cosine on MiniLM (0.963 vs 0.993) for no speed gain.
    per_channel: bool = True
    per_tensor: bool = False  # explicit opt-in to per-tensor (overrides per_channel)
    nodes_to_exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()  # empty: every type onnxruntime can quantize
    reduce_range: bool = False  # 7-bit weights: avoids u8s8 saturation on AVX2 without VNNI
    weight_type: str = "int8"  # "int8" or "uint8"
    preprocess: bool = True
    output_name: str = "model.int8.onnx"


@dataclass(frozen=True)
class StaticInt8Params:
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999
    per_channel: bool = True
    # Calibration inputs are padded to one length so histogram calibrators
    # (entropy, percentile) see tensors of one shape.
    sequence_length: int = 128
    max_samples: int = 128
    activation_type: str = "uint8"
    weight_type: str = "int8"
    nodes_to_exclude: tuple[str, ...] = ()
    # MatMul only: quantizing every op also quantizes the additive attention
    # mask (-3.4e38 for padding), whose range wipes out all other values
    # (cosine 0.41 on MiniLM with all ops vs 0.94 with MatMul only).
    op_types: tuple[str, ...] = ("MatMul",)
    reduce_range: bool = False
    preprocess: bool = True
    output_name: str = "model.qdq.onnx"


@dataclass(frozen=True)
class Fp16Params:
    # Inputs/outputs stay float32 so callers and tokenizers do not change.
    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = ()
    output_name: str = "model.fp16.onnx"


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if name not in types:
        raise QuantizeError(f"unknown quantization type {name!r}; use int8 or uint8")
    return types[name]


def model_input_names(model_path: str | Path) -> list[str]:
    """Graph inputs that are not initializers (old exporters list weights as inputs)."""
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def op_histogram(model_path: str | Path) -> dict[str, int]:
    model = onnx.load(str(model_path), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node))


def resolve_onnx(model_path: str | Path) -> Path:
    """The .onnx file itself, or the single .onnx file in a model folder.

    Raises:
        QuantizeError: nothing (or more than one model) to pick.
    """
    path = Path(model_path)
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise QuantizeError(f"expected one .onnx file in {path}, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise QuantizeError(f"model not found: {path}")
    return path


def _check_model(model_path: str | Path) -> Path:
    path = resolve_onnx(model_path)
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise QuantizeError(f"not a valid ONNX model: {exc}") from None
    except Exception as exc:
        raise QuantizeError(f"cannot read ONNX model: {exc}") from None
    return path


def preprocess(model_path: str | Path, output_path: str | Path, logs: list[str]) -> Path:
    """onnxruntime's quantization pre-processing (shape inference + basic optimizer).

    Symbolic shape inference fails on graphs from the legacy exporter
    ("Incomplete symbolic shape inference"), so it is skipped; ONNX shape
    inference and the optimizer pass still run.  On failure the original model
    is used and the reason logged: pre-processing only helps, it is not required.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(model_path), str(output_path), skip_symbolic_shape=True)
    except Exception as exc:
        logs.append(f"pre-processing skipped: {type(exc).__name__}: {exc}")
        return Path(model_path)
    logs.append("pre-processing: shape inference + onnxruntime optimizer")
    return Path(output_path)


def _finish(
    out_path: Path, src: str | Path, recipe: str, params: Any, logs: list[str]
) -> RecipeResult:
    size = out_path.stat().st_size
    parent = Path(src).stat().st_size
    ops = op_histogram(out_path)
    logs.append(f"{out_path.name}: {size} bytes ({size / parent:.3f}x of parent)")
    return RecipeResult(
        output_path=str(out_path),
        recipe=recipe,
        params=asdict(params),
        log=logs,
        metrics={"size_bytes": size, "size_ratio": size / parent, "op_types": ops},
    )


def refuse_quantized(model_path: str) -> None:
    found = already_quantized(onnx.load(model_path, load_external_data=False))
    if found:
        raise QuantizeError(
            f"this model is already quantized ({found}); quantizing it again only adds error. "
            "Run the recipe on its fp32 original (upload it as a version of this model), "
            "or publish this version as it is."
        )


def quantize_int8_dynamic(
    model_path: str,
    output_dir: str,
    params: DynamicInt8Params = DynamicInt8Params(),
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
) -> RecipeResult:
    """Dynamic int8: int8 weights, activations quantized per call (uint8).

    Raises:
        QuantizeError: missing/invalid model or bad parameters.
    """
    from onnxruntime.quantization import quantize_dynamic

    model_path = str(_check_model(model_path))
    refuse_quantized(model_path)
    weight_type = _quant_type(params.weight_type)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / params.output_name
    per_channel = params.per_channel and not params.per_tensor
    logs = [
        f"per_channel={per_channel} reduce_range={params.reduce_range} weights={params.weight_type}"
    ]
    if calibration_path:
        logs.append("dynamic quantization needs no calibration data; the dataset was not used")
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(model_path)
        if params.preprocess:
            progress(0.1, "preprocess", "shape inference and graph optimisation")
            src = preprocess(src, Path(tmp) / "pre.onnx", logs)
        progress(0.4, "quantize", "quantize_dynamic")
        quantize_dynamic(
            str(src),
            str(out_path),
            op_types_to_quantize=list(params.op_types) or None,
            per_channel=per_channel,
            reduce_range=params.reduce_range,
            weight_type=weight_type,
            nodes_to_exclude=list(params.nodes_to_exclude),
            # Contrib ops from a previous optimisation have no inferred type.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    copy_sidecars(model_path, out_dir)
    progress(1.0, "done", "quantized")
    return _finish(out_path, model_path, "onnx-int8-dynamic", params, logs)


def calibration_feeds(
    model_path: str | Path,
    calibration_path: str | None,
    tokenizer_path: str | None,
    sequence_length: int,
    max_samples: int,
) -> list[dict[str, np.ndarray]]:
    """Batch-1 input dicts for calibration.

    ``.npz``: named input tensors (first axis = samples).  ``.jsonl``: texts,
    tokenized and padded to ``sequence_length``.  None: the built-in sentences
    (text models only).

    Raises:
        DatasetError: empty data, inputs that do not match the model, or text
            data without a tokenizer.
    """
    names = model_input_names(model_path)
    if calibration_path is not None and str(calibration_path).endswith(".npz"):
        arrays = load_npz(calibration_path, names)
        count = min(next(iter(arrays.values())).shape[0], max_samples)
        return [{n: arrays[n][i : i + 1] for n in names} for i in range(count)]
    if tokenizer_path is None:
        raise DatasetError("text calibration data needs the model's tokenizer.json")
    if calibration_path is None:
        texts = default_sentences(max_samples, seed=7)
    else:
        texts = [e.text for e in load_jsonl(calibration_path)][:max_samples]
    known = {"input_ids", "attention_mask", "token_type_ids"}
    if not set(names) <= known:
        raise DatasetError(f"model inputs {names} are not text inputs; use an .npz calibration set")
    enc = encode(tokenizer_path, texts, max_length=sequence_length, pad_to=sequence_length)
    return [enc.row(i, trim=False).feeds(names) for i in range(len(texts))]


class _ListReader:
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_int8_static(
    model_path: str,
    output_dir: str,
    params: StaticInt8Params = StaticInt8Params(),
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
) -> RecipeResult:
    """Static int8 in QDQ format with calibrated activation ranges.

    Raises:
        QuantizeError: invalid model or parameters.
        DatasetError: empty or mismatched calibration data.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    model_path = str(_check_model(model_path))
    refuse_quantized(model_path)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if params.calibration_method not in methods:
        raise QuantizeError(f"unknown calibration method {params.calibration_method!r}")
    progress(0.05, "calibration-data", "loading calibration inputs")
    feeds = calibration_feeds(
        model_path, calibration_path, tokenizer_path, params.sequence_length, params.max_samples
    )
    logs = [f"calibration: {len(feeds)} samples, method={params.calibration_method}"]
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / params.output_name
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if params.calibration_method == "percentile":
        extra["CalibPercentile"] = params.percentile
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(model_path)
        if params.preprocess:
            progress(0.1, "preprocess", "shape inference and graph optimisation")
            src = preprocess(src, Path(tmp) / "pre.onnx", logs)
        progress(0.2, "calibrate", f"calibrating on {len(feeds)} samples")
        quantize_static(
            str(src),
            str(out_path),
            _ListReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(params.op_types) or None,
            per_channel=params.per_channel,
            reduce_range=params.reduce_range,
            activation_type=_quant_type(params.activation_type),
            weight_type=_quant_type(params.weight_type),
            nodes_to_exclude=list(params.nodes_to_exclude),
            calibrate_method=methods[params.calibration_method],
            extra_options=extra,
        )
    copy_sidecars(model_path, out_dir)
    progress(1.0, "done", "quantized")
    return _finish(out_path, model_path, "onnx-int8-static", params, logs)


def convert_fp16(
    model_path: str,
    output_dir: str,
    params: Fp16Params = Fp16Params(),
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
) -> RecipeResult:
    """Float16 weights and compute, float32 inputs/outputs (``keep_io_types``).

    Uses onnxruntime's maintained copy of the onnxconverter-common converter:
    the original mis-types Cast nodes on BERT attention masks (the model then
    fails to load with "bound to different types").

    Raises:
        QuantizeError: invalid model.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model_path = str(_check_model(model_path))
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / params.output_name
    progress(0.2, "convert", "float16 conversion")
    block = list(DEFAULT_OP_BLOCK_LIST) + list(params.op_block_list)
    fp16 = convert_float_to_float16(
        onnx.load(model_path), keep_io_types=params.keep_io_types, op_block_list=block
    )
    onnx.save(fp16, str(out_path))
    copy_sidecars(model_path, out_dir)
    progress(1.0, "done", "converted")
    logs = [f"keep_io_types={params.keep_io_types}"]
    return _finish(out_path, model_path, "onnx-fp16", params, logs)


def copy_sidecars(src_model: str | Path, out_dir: str | Path) -> None:
    """Copy the tokenizer files that sit beside the parent model."""
    src = Path(src_model).parent
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).is_file() and not (Path(out_dir) / name).exists():
            shutil.copyfile(src / name, Path(out_dir) / name)
