"""Recipe ``tflm``: a small Hugging Face encoder -> a full-int8 TFLite Micro model,
its C array and header, and the exact tensor arena it needs.

Order: refuse early (size, tokenizer, shape) before anything heavy; swap GELU and
measure what the swap alone costs against the unmodified model; convert with
litert-torch; quantize weights and activations to int8; check every operator has a
TFLM kernel and every weight is inside the flatbuffer; measure arena and latency on
the TFLM interpreter; write the firmware sources.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress
from compression.pipeline.textdata import default_sentences
from compression.pipeline.tflm import micro, torch_side
from compression.pipeline.tflm.carray import write_c_source
from compression.pipeline.tflm.params import TflmError, TflmParams, UnsupportedOpsError
from compression.pipeline.tflm.quantize import (
    calibration_texts,
    quantize_full_int8,
    text_feeds,
)

__all__ = ["convert_tflm", "torch_outputs"]

MODEL_FILE = "model.tflite"
DEFAULT_PARAMS = TflmParams()
SWAP_CHECK_TEXTS = 64


def _tokenizer(model_dir: Path, tokenizer_path: str | None) -> Path:
    for candidate in (tokenizer_path, model_dir / "tokenizer.json"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise TflmError("tflm needs the model's tokenizer.json to build calibration inputs")


def _check_length(model_dir: Path, length: int) -> None:
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    limit = int(config.get("max_position_embeddings") or length)
    if length > limit:
        raise TflmError(f"sequence_length {length} exceeds the model's {limit} positions")


def torch_outputs(wrapper: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        rows = [
            wrapper(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"])).numpy()
            for f in feeds
        ]
    return np.concatenate(rows)


def _swap_fidelity(reference: np.ndarray, swapped: np.ndarray, task: str) -> dict[str, Any]:
    from compression.pipeline.evaluate import classifier_fidelity, embedding_fidelity

    if task == "classifier":
        return classifier_fidelity(reference, swapped).to_dict()
    return embedding_fidelity(reference, swapped).to_dict()


def _check_int8(summary: micro.GraphSummary) -> list[str]:
    """Raises on ops with no kernel or external buffers; returns the float tensors'
    names (expected: only the hybrid EMBEDDING_LOOKUP's output)."""
    missing = micro.missing_kernels(summary.ops)
    if missing:
        raise UnsupportedOpsError(missing)
    if summary.external_buffers:
        raise TflmError(f"{summary.external_buffers} buffers are outside the flatbuffer")
    if "GELU" in summary.ops:
        raise UnsupportedOpsError(["GELU"])
    return summary.float_tensors


def convert_tflm(
    model_dir: str,
    output_dir: str,
    params: TflmParams = DEFAULT_PARAMS,
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
) -> RecipeResult:
    """Build ``output_dir/model.tflite`` + ``model_data.cc`` + ``model_data.h``.

    Raises:
        TooLargeError: more parameters than ``params.max_parameters``.
        UnsupportedOpsError: operators with no TFLite Micro kernel (all listed).
        TflmError: no tokenizer, unsupported architecture, bad calibration data, or a
            converted model that does not run on TFLite Micro.
    """
    src, out = Path(model_dir), Path(output_dir)
    parameters = torch_side.check_size(src, params)
    tokenizer = _tokenizer(src, tokenizer_path)
    _check_length(src, params.sequence_length)
    task = torch_side.detect_task(src, params.task)
    texts, calibration_source = calibration_texts(calibration_path, params.calibration_samples)
    calibration = text_feeds(tokenizer, texts, params.sequence_length)
    log = [f"task={task} parameters={parameters:,} calibration={calibration_source}"]

    progress(0.05, "load", "loading the PyTorch model")
    parent = torch_side.load_model(src, task)
    swapped_model = copy.deepcopy(parent)
    swapped = torch_side.swap_gelu(swapped_model, params.gelu)
    check_feeds = text_feeds(
        tokenizer, default_sentences()[:SWAP_CHECK_TEXTS], params.sequence_length
    )
    reference = torch_outputs(torch_side.micro_wrapper(parent, task), check_feeds)
    wrapper = torch_side.micro_wrapper(swapped_model, task)
    gelu_fidelity = _swap_fidelity(reference, torch_outputs(wrapper, check_feeds), task)
    log.append(f"replaced {swapped} GELU activations ({params.gelu} form): {gelu_fidelity}")

    # Beside the output (inside the job's work folder, which the worker always removes,
    # even when this converter process is killed).
    scratch = out.parent if out.parent.is_dir() else None
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        float_path = Path(tmp) / "float.tflite"
        progress(0.2, "convert", "litert-torch: PyTorch -> float .tflite")
        torch_side.to_float_tflite(wrapper, params.sequence_length, float_path)
        missing = micro.missing_kernels(micro.graph_summary(float_path.read_bytes()).ops)
        if missing:
            raise UnsupportedOpsError(missing)
        progress(0.5, "quantize", f"int8 weights and activations, {len(calibration)} inputs")
        model = quantize_full_int8(float_path, calibration)
    summary = micro.graph_summary(model)
    float_tensors = _check_int8(summary)

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    model_path.write_bytes(model)
    progress(0.7, "arena", "measuring the tensor arena on the TFLite Micro interpreter")
    measured = micro.measure_arena(model, calibration[0])
    arena = measured.size_bytes
    runner = micro.MicroModel(model, arena_size=arena)
    latency = runner.latency_ms(calibration[0], params.latency_runs)
    progress(0.9, "c-array", "writing model_data.cc and model_data.h")
    write_c_source(
        model,
        out,
        array_name=params.array_name,
        arena_size=arena,
        constants=_io_constants(runner, params.sequence_length),
    )
    log.append(
        f"{len(model)} bytes, arena {arena} bytes, TFLM latency p50 {latency['p50_ms']:.2f} ms"
    )
    progress(1.0, "done", "tflm model ready")
    return RecipeResult(
        output_path=str(model_path),
        recipe="tflm",
        params=dataclasses.asdict(params),
        log=log,
        metrics={
            "parameters": parameters,
            "arena_bytes": arena,
            "arena_reported_bytes": measured.reported_bytes,
            "tflm_latency": {**latency, "sequence_length": params.sequence_length},
            "gelu_swap_fidelity": gelu_fidelity,
            "ops": summary.ops,
            "tensor_types": summary.tensor_types,
            "float_tensors": float_tensors,
            "model_bytes": len(model),
            "calibration": {"source": calibration_source, "count": len(calibration)},
        },
        pipeline={
            "task": "classifier" if task == "classifier" else "embedding",
            "runtime": "tflite-micro",
            "tokenizer": "tokenizer.json",
            "sequence_length": params.sequence_length,
            "inputs": list(runner.input_names),
            "output": "logits" if task == "classifier" else "embedding",
            "pooling": "inside-graph" if task != "classifier" else None,
            "normalize": task != "classifier",
            "arena_bytes": arena,
            "firmware_files": ["model_data.cc", "model_data.h"],
        },
    )


def _io_constants(runner: micro.MicroModel, length: int) -> dict[str, int | float]:
    """Header constants a firmware needs to fill the int8 mask and read the output."""
    constants: dict[str, int | float] = {"kSequenceLength": length}
    interp = runner.interpreter
    for index, name in enumerate(runner.input_names):
        quant = interp.get_input_details(index)["quantization_parameters"]
        if len(quant["scales"]):
            prefix = "kMask" if name == "attention_mask" else f"kInput{index}"
            constants[f"{prefix}Scale"] = float(quant["scales"][0])
            constants[f"{prefix}ZeroPoint"] = int(quant["zero_points"][0])
    quant = interp.get_output_details(0)["quantization_parameters"]
    if len(quant["scales"]):
        constants["kOutputScale"] = float(quant["scales"][0])
        constants["kOutputZeroPoint"] = int(quant["zero_points"][0])
    return constants
