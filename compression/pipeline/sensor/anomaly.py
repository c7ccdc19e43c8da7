"""Unsupervised anomaly detection for unlabelled machine data (task ``anomaly``).

The sensor Transformer learns to *forecast* the next ``horizon`` steps of normal data
from the ``window - horizon`` steps before them. A block's anomaly score is the mean
squared forecast error in standardised units; the threshold is a quantile of the scores
on normal calibration data the model did not train on (the last share of the training
stream, in time order), times a margin. Where labels exist (an ``is_anomaly`` column),
precision, recall and F1 are measured per forecast block, for the int8 model on TFLite
Micro and, side by side under the same calibration rule, for a moving-window z-score
baseline (the largest |x - mean| / std of the block against the window before it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress
from compression.pipeline.sensor import export
from compression.pipeline.sensor.data import (
    fill_missing,
    load_sensor_data,
    read_csv_stream,
)
from compression.pipeline.sensor.metrics import detection_report
from compression.pipeline.sensor.params import SensorDataError, SensorParams
from compression.pipeline.tflm import micro
from compression.pipeline.tflm.carray import write_c_source

__all__ = ["Blocks", "forecast_scores", "load_blocks", "train_anomaly", "zscore_scores"]

DEFAULT_WINDOW = 64
CALIBRATION_SHARE = 0.25


@dataclass
class Blocks:
    """Windows [n, c, window]: the model sees [:, :, :-horizon] and forecasts the rest."""

    x: np.ndarray
    labels: np.ndarray | None
    channels: list[str]
    source: str


def _stream_blocks(path: Path, window: int, hop: int, horizon: int) -> Blocks:
    stream, channels, step_labels, _ = read_csv_stream(
        path.read_text(encoding="utf-8", errors="replace"), path.name
    )
    stream, _ = fill_missing(stream)
    starts = list(range(0, stream.shape[1] - window + 1, max(1, hop)))
    if not starts:
        raise SensorDataError(f"{path.name}: fewer than {window} rows")
    x = np.stack([stream[:, s : s + window] for s in starts]).astype(np.float32)
    labels = None
    if step_labels is not None:
        flags = np.asarray([v not in ("0", "", "0.0") for v in step_labels])
        # A block is anomalous when a step it forecasts is.
        labels = np.asarray([flags[s + window - horizon : s + window].any() for s in starts])
    return Blocks(x, labels, channels, path.name)


def load_blocks(path: str | Path, window: int, hop: int, horizon: int) -> Blocks:
    """Forecast blocks from a CSV stream (cut every ``hop`` steps) or from windows
    (.ts/.npz: a window is one block, its label > 0 means anomalous).

    Raises:
        SensorDataError: unreadable data or windows shorter than horizon + 8.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        blocks = _stream_blocks(path, window, hop, horizon)
    else:
        data = load_sensor_data(path, window)
        labels = None
        if data.y is not None:
            names = np.asarray(data.class_names)
            labels = np.asarray([n not in ("0", "normal", "False") for n in names[data.y]])
        blocks = Blocks(data.x, labels, data.channels, data.source)
    if blocks.x.shape[2] < horizon + 8:
        raise SensorDataError(
            f"windows of {blocks.x.shape[2]} steps are too short for horizon {horizon}"
        )
    return blocks


def forecast_scores(
    forecast: np.ndarray, target: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """Mean squared error per block in standardised units (the model forecasts
    standardised values; ``target`` is in the sensor's units; [n, c, h] arrays)."""
    scaled = (target - mean.reshape(1, -1, 1)) / std.reshape(1, -1, 1)
    return np.asarray(((forecast - scaled) ** 2).mean(axis=(1, 2)))


def zscore_scores(x: np.ndarray, horizon: int) -> np.ndarray:
    """The baseline: max over the block's steps and channels of |x - mean| / std of the
    window before it."""
    context, target = x[:, :, :-horizon], x[:, :, -horizon:]
    mean = context.mean(axis=2, keepdims=True)
    std = np.maximum(context.std(axis=2, keepdims=True), 1e-6)
    return np.asarray((np.abs(target - mean) / std).max(axis=(1, 2)))


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


def threshold(scores: np.ndarray, params: SensorParams) -> float:
    return float(np.quantile(scores, params.threshold_quantile) * params.threshold_margin)


def _micro_forecasts(runner: micro.MicroModel, context: np.ndarray) -> np.ndarray:
    key = runner.input_names[0]
    return np.concatenate([runner.run({key: context[i : i + 1]}) for i in range(len(context))])


def _detection(
    name: str, scores: np.ndarray, bound: float, labels: np.ndarray | None
) -> dict[str, Any]:
    flagged = scores > bound
    found: dict[str, Any] = {"threshold": round(bound, 6), "flagged": int(flagged.sum())}
    if labels is not None:
        found.update(detection_report(labels, flagged))
    return {name: found}


def train_anomaly(
    spec_path: str,
    output_dir: str,
    params: SensorParams,
    progress: ProgressFn = no_progress,
    train_path: str | None = None,
    eval_path: str | None = None,
) -> RecipeResult:
    """The anomaly variant of ``train_sensor`` (same outputs, plus the threshold).

    Raises:
        SensorDataError: no or unusable training data.
    """
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
    from compression.pipeline.sensor.train import channel_stats, train_forecaster

    if not train_path:
        raise SensorDataError("the sensor recipe needs a training dataset")
    window, h = params.window or DEFAULT_WINDOW, params.horizon
    train = load_blocks(train_path, window, params.hop or 1, h)
    cut = int(len(train.x) * (1 - max(params.validation_split, CALIBRATION_SHARE)))
    if cut < 8 or len(train.x) - cut < 4:
        raise SensorDataError(f"{len(train.x)} training windows are too few to train and calibrate")
    # Time order: calibrate on the end of the stream, after the windows trained on.
    fit, calibrate = train.x[: cut - window // max(1, params.hop or 1)], train.x[cut:]
    if len(fit) < 8:
        fit = train.x[:cut]
    progress(0.02, "training", f"forecasting {h} steps from {window - h}, {len(fit)} windows")
    result = train_forecaster(
        fit[:, :, :-h], fit[:, :, -h:], params, lambda f, m: progress(0.02 + 0.6 * f, "training", m)
    )
    model = result.model
    mean, std = channel_stats(fit[:, :, :-h])
    channels, context = int(train.x.shape[1]), window - h
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress(0.65, "export", "ONNX and float TFLite")
    export.to_onnx(model, channels, context, out / "model.onnx")
    float_path = out / "model_float.tflite"
    export.to_float_tflite(model, channels, context, float_path)
    progress(0.75, "quantize", "full int8 (weights and activations)")
    calibration_x = fit[
        np.random.default_rng(params.seed).permutation(len(fit))[: params.calibration_samples]
    ]
    int8 = export.shorten_names(
        export.quantize_int8(float_path, calibration_x[:, :, :-h], global_ranges=True)
    )
    summary = check_micro(int8)
    model_path = out / MODEL_FILE
    model_path.write_bytes(int8)
    progress(0.85, "arena", "measuring the tensor arena; calibrating the threshold")
    key = micro.MicroModel(int8).input_names[0]
    first = {key: fit[:1, :, :-h]}
    arena = micro.measure_arena(int8, first)
    runner = micro.MicroModel(int8, arena_size=arena.size_bytes)
    latency = runner.latency_ms(first, params.latency_runs)
    normal = forecast_scores(
        _micro_forecasts(runner, calibrate[:, :, :-h]), calibrate[:, :, -h:], mean, std
    )
    bound = threshold(normal, params)
    baseline_bound = threshold(zscore_scores(calibrate, h), params)
    evaluation: dict[str, Any] = {"calibration_windows": len(calibrate)}
    if params.keep_scores:
        evaluation["calibration_scores"] = _rounded(normal)
        evaluation["baseline_calibration_scores"] = _rounded(zscore_scores(calibrate, h))
    if eval_path:
        test = load_blocks(eval_path, window, h, h)
        if test.x.shape[1] != channels:
            raise SensorDataError(
                f"evaluation data has {test.x.shape[1]} channels, training data {channels}"
            )
        import torch

        with torch.no_grad():
            float_forecast = model(torch.from_numpy(test.x[:, :, :-h])).numpy()
        float_scores = forecast_scores(float_forecast, test.x[:, :, -h:], mean, std)
        float_normal = forecast_scores(
            model(torch.from_numpy(calibrate[:, :, :-h])).detach().numpy(),
            calibrate[:, :, -h:],
            mean,
            std,
        )
        scores = forecast_scores(
            _micro_forecasts(runner, test.x[:, :, :-h]), test.x[:, :, -h:], mean, std
        )
        evaluation.update(
            {
                **_detection("tflm_int8", scores, bound, test.labels),
                **_detection("float", float_scores, threshold(float_normal, params), test.labels),
                **_detection(
                    "zscore_baseline", zscore_scores(test.x, h), baseline_bound, test.labels
                ),
                "blocks": len(test.x),
                **(
                    {
                        "scores": _rounded(scores),
                        "baseline_scores": _rounded(zscore_scores(test.x, h)),
                    }
                    if params.keep_scores
                    else {}
                ),
                **(
                    {"labels": test.labels.tolist()}
                    if params.keep_scores and test.labels is not None
                    else {}
                ),
                "anomalous_blocks": None if test.labels is None else int(test.labels.sum()),
                "source": test.source,
            }
        )
    sidecar = {
        "format": 1,
        "task": "sensor-anomaly",
        "input": micro_input_name(runner),
        "channels": channels,
        "channel_names": train.channels,
        "window": window,
        "context": context,
        "horizon": h,
        "hop": h,
        "labels": ["normal", "anomaly"],
        "threshold": bound,
        "score_mean": [float(v) for v in mean],
        "score_std": [float(v) for v in std],
        "input_quantization": quantization(runner.interpreter.get_input_details(0)),
        "output_quantization": quantization(runner.interpreter.get_output_details(0)),
        "arena_bytes": arena.size_bytes,
    }
    (out / SIDECAR).write_text(json.dumps(sidecar, indent=2))
    constants: dict[str, int | float] = {"kChannels": channels, "kWindow": context, "kHorizon": h}
    constants["kThreshold"] = float(bound)
    write_c_source(
        int8, out, array_name=params.array_name, arena_size=arena.size_bytes, constants=constants
    )
    golden_feeds = [
        {key: calibration_x[i : i + 1, :, :-h]} for i in range(min(GOLDEN_SIZE, len(calibration_x)))
    ]
    golden = golden_set(runner, golden_feeds, model_path, out / GOLDEN_FILE, "tensor")
    export.pack_exports(out)
    progress(1.0, "done", "anomaly model ready")
    return RecipeResult(
        output_path=str(model_path),
        recipe="sensor-transformer",
        params=dataclasses.asdict(params),
        log=[
            f"threshold {bound:.5f} (z-score baseline {baseline_bound:.3f})",
            *(
                f"{name}: {json.dumps(evaluation[name])}"
                for name in ("tflm_int8", "float", "zscore_baseline")
                if name in evaluation
            ),
        ],
        metrics={
            "task": "anomaly",
            "parameters": model.parameter_count(),
            "model_bytes": len(int8),
            "flash_bytes": len(int8),
            "arena_bytes": arena.size_bytes,
            "arena_reported_bytes": arena.reported_bytes,
            "tflm_latency": latency,
            "ops": summary.ops,
            "threshold": bound,
            "anomaly": evaluation,
            "training": {
                "seconds": round(result.seconds, 2),
                "cpu_seconds": round(result.cpu_seconds, 2),
                "epochs": result.epochs,
                "windows": len(fit),
                "threads": params.threads,
            },
            "golden": golden,
        },
        pipeline={
            "task": "sensor-anomaly",
            "runtime": "litert",
            "labels": ["normal", "anomaly"],
            "max_seq_len": context,
            "sensor": sidecar,
            "firmware_files": ["model_data.cc", "model_data.h"],
            "arena_bytes": arena.size_bytes,
        },
    )
