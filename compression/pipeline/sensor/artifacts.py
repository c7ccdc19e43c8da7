"""What both sensor recipes (classifier and anomaly) write and check: file names, the
TFLM kernel check, the golden self-test set and int8 quantization parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.tflm import micro
from compression.pipeline.tflm.params import TflmError, UnsupportedOpsError

MODEL_FILE = "model.tflite"
SIDECAR = "sensor.json"
GOLDEN_FILE = "golden.npz"
GOLDEN_SIZE = 16


def check_micro(model: bytes) -> micro.GraphSummary:
    summary = micro.graph_summary(model)
    missing = micro.missing_kernels(summary.ops)
    if missing:
        raise UnsupportedOpsError(missing)
    if summary.external_buffers:
        raise TflmError(f"{summary.external_buffers} buffers are outside the flatbuffer")
    return summary


def _litert_raw(model_path: Path, tensors: list[np.ndarray]) -> list[np.ndarray] | None:
    """Raw int8 outputs of the LiteRT interpreter (what an agent runs), or None when
    LiteRT is not installed here."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None
    interp = Interpreter(model_path=str(model_path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for tensor in tensors:
        interp.set_tensor(inp["index"], tensor)
        interp.invoke()
        results.append(np.array(interp.get_tensor(out["index"])))
    return results


def golden_set(
    runner: micro.MicroModel,
    feeds: list[dict[str, np.ndarray]],
    model_path: Path,
    out: Path,
    task: str,
) -> dict[str, Any]:
    """The device self-test: quantized windows and TFLM's raw int8 outputs; the bound is
    what LiteRT (the agent's runtime) needs here, doubled, and at least 2 int8 steps."""
    from compression.pipeline.golden import build_golden

    count = min(GOLDEN_SIZE, len(feeds))
    tensors = [runner.feed_tensors(f) for f in feeds[:count]]
    references = []
    for t in tensors:
        runner._set_inputs(t)
        runner.interpreter.invoke()
        references.append(np.array(runner.interpreter.get_output(0)))
    name = micro_input_name(runner)
    device_feeds = [{name: t[runner.input_names[0]]} for t in tensors]
    litert = _litert_raw(model_path, [f[name] for f in device_feeds])
    worst = 0.0
    if litert is not None:
        worst = max(
            float(np.abs(a.astype(np.float64) - b).max())
            for a, b in zip(litert, references, strict=True)
        )
    tolerance = {"max_abs_error": max(2.0, 2.0 * worst)}
    digest = build_golden(out, device_feeds, references, task, tolerance)
    return {"sha256": digest, "count": count, "tolerance": tolerance, "litert_worst_abs": worst}


def micro_input_name(runner: micro.MicroModel) -> str:
    """The input's name as agents see it ("serving_default_samples:0" -> "samples")."""
    return runner.input_names[0].split(":")[0].removeprefix("serving_default_")


def quantization(details: dict[str, Any]) -> dict[str, float | int] | None:
    q = details["quantization_parameters"]
    if not len(q["scales"]):
        return None
    return {"scale": float(q["scales"][0]), "zero_point": int(q["zero_points"][0])}
