"""Recipe ``sensor-transformer``: train a tiny time-series Transformer from scratch on
the operator's sensor windows, quantize it to full int8 and ship it as TFLite, TFLite
Micro (C array, header, measured arena) and ONNX.

Order: read and check the data before anything heavy; train (float, PyTorch, CPU);
export ONNX and a float .tflite; quantize weights and activations to int8 on training
windows; check every operator has a TFLM kernel; measure accuracy of float, int8 and
TFLM side by side on the evaluation windows, the exact arena and the latency; write the
firmware sources, ``sensor.json`` (what the agent's stream buffer needs) and the golden
set a device replays.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress
from compression.pipeline.sensor import export
from compression.pipeline.sensor.artifacts import (
    GOLDEN_FILE,
    GOLDEN_SIZE,
    MODEL_FILE,
    SIDECAR,
    check_micro,
    golden_set,
    micro_input_name,
    quantization,
)
from compression.pipeline.sensor.data import SensorData, load_sensor_data
from compression.pipeline.sensor.metrics import classification_report
from compression.pipeline.sensor.params import SensorDataError, SensorParams
from compression.pipeline.tflm import micro
from compression.pipeline.tflm.carray import write_c_source

__all__ = ["MODEL_FILE", "SIDECAR", "load_pair", "train_sensor"]

DEFAULT_PARAMS = SensorParams()


def load_pair(
    train_path: str, eval_path: str | None, params: SensorParams
) -> tuple[SensorData, SensorData | None]:
    """Training and evaluation windows with the same shape and classes.

    Raises:
        SensorDataError: unreadable data, or evaluation data that does not match.
    """
    train = load_sensor_data(train_path, params.window, params.hop)
    if eval_path is None:
        return train, None
    test = load_sensor_data(eval_path, train.x.shape[2], params.hop)
    if test.x.shape[1] != train.x.shape[1]:
        raise SensorDataError(
            f"evaluation data has {test.x.shape[1]} channels, training data {train.x.shape[1]}"
        )
    if test.y is not None and train.y is not None and test.class_names != train.class_names:
        # Re-index the evaluation labels by the training classes (same names, any order).
        unknown = sorted(set(test.class_names) - set(train.class_names))
        if unknown:
            raise SensorDataError(f"evaluation labels {unknown[:5]} never occur in training")
        index = {name: i for i, name in enumerate(train.class_names)}
        test.y = np.asarray([index[test.class_names[v]] for v in test.y], dtype=np.int64)
        test.class_names = list(train.class_names)
    return train, test


def _float_outputs(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(x.astype(np.float32))).numpy())


def _onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {export.INPUT_NAME: x.astype(np.float32)})[0])


def _sidecar(
    runner: micro.MicroModel, data: SensorData, params: SensorParams, arena: int
) -> dict[str, Any]:
    interp = runner.interpreter
    window = int(data.x.shape[2])
    return {
        "format": 1,
        "task": f"sensor-{params.task}",
        "input": micro_input_name(runner),
        "channels": int(data.x.shape[1]),
        "channel_names": data.channels,
        "window": window,
        # One prediction per hop: half a window by default.
        "hop": params.hop or max(1, window // 2),
        "labels": data.class_names,
        "input_quantization": quantization(interp.get_input_details(0)),
        "output_quantization": quantization(interp.get_output_details(0)),
        "arena_bytes": arena,
    }


def _evaluate(
    trained: Any, onnx_path: Path, runner: micro.MicroModel, data: SensorData, classes: list[str]
) -> dict[str, Any]:
    assert data.y is not None
    key = runner.input_names[0]
    float_out = _float_outputs(trained, data.x)
    onnx_out = _onnx_outputs(onnx_path, data.x)
    tflm_out = np.concatenate([runner.run({key: data.x[i : i + 1]}) for i in range(len(data.x))])
    reports = {
        name: classification_report(data.y, out.argmax(1), classes)
        for name, out in (("float", float_out), ("onnx", onnx_out), ("tflm_int8", tflm_out))
    }
    agreement = float((float_out.argmax(1) == tflm_out.argmax(1)).mean())
    return {**reports, "int8_float_agreement": round(agreement, 4), "source": data.source}


def train_sensor(
    spec_path: str,
    output_dir: str,
    params: SensorParams = DEFAULT_PARAMS,
    progress: ProgressFn = no_progress,
    train_path: str | None = None,
    eval_path: str | None = None,
) -> RecipeResult:
    """Train, quantize and export; writes model.tflite (int8), model.onnx (float),
    model_float.tflite, model_data.cc/.h, sensor.json and golden.npz into output_dir.

    ``spec_path`` is the training spec the version was created from (kept in lineage).

    Raises:
        SensorDataError: no or unusable training data.
        UnsupportedOpsError, TflmError: the int8 model does not run on TFLite Micro.
    """
    from compression.pipeline.sensor.train import train_classifier

    if params.task != "classification":
        from compression.pipeline.sensor.anomaly import train_anomaly

        return train_anomaly(spec_path, output_dir, params, progress, train_path, eval_path)
    if not train_path:
        raise SensorDataError("the sensor recipe needs a training dataset")
    out = Path(output_dir)
    train, test = load_pair(train_path, eval_path, params)
    log = [f"training data: {json.dumps(train.summary())}"]
    progress(
        0.02,
        "training",
        f"{len(train.x)} windows, {train.x.shape[1]} channels x {train.x.shape[2]}",
    )
    result = train_classifier(train, params, lambda f, m: progress(0.02 + 0.6 * f, "training", m))
    model = result.model
    log.append(
        f"trained {params.epochs} epochs in {result.seconds:.1f} s ({result.cpu_seconds:.1f} CPU s)"
    )
    channels, window = int(train.x.shape[1]), int(train.x.shape[2])
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    progress(0.65, "export", "ONNX and float TFLite")
    export.to_onnx(model, channels, window, onnx_path)
    float_path = out / "model_float.tflite"
    export.to_float_tflite(model, channels, window, float_path)
    progress(0.75, "quantize", "full int8 (weights and activations)")
    rng = np.random.default_rng(params.seed)
    calibration = train.x[rng.permutation(len(train.x))[: params.calibration_samples]]
    int8 = export.shorten_names(export.quantize_int8(float_path, calibration))
    summary = check_micro(int8)
    model_path = out / MODEL_FILE
    model_path.write_bytes(int8)
    progress(0.85, "arena", "measuring the tensor arena on the TFLite Micro interpreter")
    runner0 = micro.MicroModel(int8)
    key = runner0.input_names[0]
    first = {key: train.x[:1]}
    arena = micro.measure_arena(int8, first)
    runner = micro.MicroModel(int8, arena_size=arena.size_bytes)
    latency = runner.latency_ms(first, params.latency_runs)
    evaluated = _evaluate(model, onnx_path, runner, test or train, train.class_names)
    sidecar = _sidecar(runner, train, params, arena.size_bytes)
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    constants: dict[str, int | float] = {
        "kChannels": channels,
        "kWindow": window,
        "kClasses": len(train.class_names),
    }
    for prefix, q in (
        ("kInput", sidecar["input_quantization"]),
        ("kOutput", sidecar["output_quantization"]),
    ):
        if q:
            constants[f"{prefix}Scale"] = float(q["scale"])
            constants[f"{prefix}ZeroPoint"] = int(q["zero_point"])
    write_c_source(
        int8, out, array_name=params.array_name, arena_size=arena.size_bytes, constants=constants
    )
    golden_feeds = [
        {key: calibration[i : i + 1]} for i in range(min(GOLDEN_SIZE, len(calibration)))
    ]
    golden = golden_set(runner, golden_feeds, model_path, out / GOLDEN_FILE, "tensor")
    accuracy = {k: v["accuracy"] for k, v in evaluated.items() if isinstance(v, dict)}
    log.append(
        f"accuracy on {evaluated['source']}: {accuracy}; "
        f"{len(int8)} bytes, arena {arena.size_bytes} bytes"
    )
    onnx_bytes, float_bytes = onnx_path.stat().st_size, float_path.stat().st_size
    export.pack_exports(out)
    progress(1.0, "done", "sensor model ready")
    return RecipeResult(
        output_path=str(model_path),
        recipe="sensor-transformer",
        params=dataclasses.asdict(params),
        log=log,
        metrics={
            "task": "classification",
            "parameters": model.parameter_count(),
            "model_bytes": len(int8),
            "flash_bytes": len(int8),
            "onnx_bytes": onnx_bytes,
            "float_tflite_bytes": float_bytes,
            "arena_bytes": arena.size_bytes,
            "arena_reported_bytes": arena.reported_bytes,
            "tflm_latency": latency,
            "ops": summary.ops,
            "accuracy": accuracy,
            "evaluation": evaluated,
            "evaluated_on": "evaluation dataset"
            if test is not None
            else "training data (no evaluation dataset)",
            "training": {
                "seconds": round(result.seconds, 2),
                "cpu_seconds": round(result.cpu_seconds, 2),
                "epochs": result.epochs,
                "best_epoch": result.best_epoch,
                "threads": params.threads,
                "data": train.summary(),
            },
            "golden": golden,
        },
        pipeline={
            "task": "sensor-classification",
            "runtime": "litert",
            "labels": train.class_names,
            "max_seq_len": window,
            "sensor": sidecar,
            "firmware_files": ["model_data.cc", "model_data.h"],
            "arena_bytes": arena.size_bytes,
            "exports": ["exports.zip: model.onnx (float), model_float.tflite"],
        },
    )
