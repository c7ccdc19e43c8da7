"""Exports of a trained sensor model: ONNX (float), TFLite (float, litert-torch) and
full-int8 TFLite for TFLite Micro (ai-edge-quantizer static int8 weights and
activations, calibrated on training windows), plus the int8 model's I/O quantization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.tflm.params import TflmError

__all__ = ["INPUT_NAME", "feeds_of", "quantize_int8", "to_float_tflite", "to_onnx"]

INPUT_NAME = "samples"
SIGNATURE = "serving_default"


def to_onnx(model: Any, channels: int, window: int, path: Path) -> None:
    """Float ONNX, opset 17, legacy exporter (fuses better than dynamo, DESIGN.md)."""
    import torch

    sample = torch.zeros(1, channels, window)
    torch.onnx.export(
        model,
        (sample,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=["output"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={INPUT_NAME: {0: "batch"}, "output": {0: "batch"}},
    )


def to_float_tflite(model: Any, channels: int, window: int, path: Path) -> None:
    import litert_torch
    import torch

    sample = torch.zeros(1, channels, window)
    edge = litert_torch.convert(model, sample_kwargs={INPUT_NAME: sample})
    edge.export(str(path))


def feeds_of(x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per window."""
    return [{INPUT_NAME: x[i : i + 1].astype(np.float32)} for i in range(len(x))]


def quantize_int8(float_model: Path, calibration: np.ndarray, global_ranges: bool = False) -> bytes:
    """Full-integer model (int8 weights and activations), every buffer inlined.

    The quantizer's calibration keeps a moving average of each sample's min/max: right
    for logits, whose range is alike in every window, wrong for a forecast, whose
    values move with the signal (a window's 8 outputs span a sliver of the range and
    the average range clips the rest). ``global_ranges`` keeps the true min/max.

    Raises:
        TflmError: the quantizer rejected the model or the calibration windows.
    """
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils

    from compression.pipeline.tflm.quantize import inline_buffers

    quant = quantizer.Quantizer(str(float_model))
    quant.load_quantization_recipe(recipe.static_wi8_ai8())
    try:
        if global_ranges:
            calib = calibrator.Calibrator(
                str(float_model), num_threads=1, qsv_update_func=qsv_utils.min_max_update
            )
            calib.calibrate({SIGNATURE: feeds_of(calibration)}, quant._recipe_manager)
            ranges = calib.get_model_qsvs()
        else:
            ranges = quant.calibrate({SIGNATURE: feeds_of(calibration)}, num_threads=1)
        result = quant.quantize(ranges)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise TflmError(f"ai-edge-quantizer failed: {exc}") from exc
    assert result.quantized_model is not None
    return inline_buffers(bytes(result.quantized_model))


def shorten_names(model: bytes) -> bytes:
    """Replace intermediate tensor names (long PyTorch module paths, ~25 KB of a 25 K
    parameter model) with short ones; the inputs, outputs and signature keep theirs."""
    from ai_edge_litert.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    for graph in obj.subgraphs:
        keep = set(graph.inputs) | set(graph.outputs)
        for index, tensor in enumerate(graph.tensors):
            if index not in keep:
                tensor.name = f"t{index}".encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


EXPORTS_ARCHIVE = "exports.zip"


def pack_exports(out: Path, names: tuple[str, ...] = ("model.onnx", "model_float.tflite")) -> Path:
    """Move the float exports into ``exports.zip`` inside the output folder.

    The version's artifact must hold exactly one loose model (model.tflite, the int8
    model devices get); a loose model.onnx would be taken for the model by the
    registry and the bundle builder.
    """
    import zipfile

    archive = out / EXPORTS_ARCHIVE
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            path = out / name
            if path.is_file():
                zf.write(path, name)
                path.unlink()
    return archive
