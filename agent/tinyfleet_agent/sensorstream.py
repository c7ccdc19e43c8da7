"""Sensor models on the agent: windows in, a class (or an anomaly verdict) out, and a
streaming buffer that turns a stream of samples into one prediction per hop.

A sensor bundle (``sensor-transformer`` recipe) carries ``sensor.json`` next to the
model: the window length, the hop, the channel count, the labels and the int8 model's
input/output quantization (the model standardises raw samples itself, so a device
feeds raw sensor values). Anomaly bundles forecast the last ``horizon`` steps of a
window from the steps before them and flag the window when the forecast error passes
the calibrated threshold.

    POST /v1/predict {"inputs": [window, ...]}       window = [channel][step] numbers
    POST /v1/stream  {"stream": "imu-1", "samples": [[ch0, ch1, ...], ...]}
        -> {"outputs": [...one per completed hop...], "ends": [sample index, ...],
            "prediction_id", "buffered"}

Stream predictions go through /v1/predict's path, so feedback, telemetry and the
fallback treat them like any other prediction.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "SIDECAR",
    "SensorConfig",
    "SensorModel",
    "SensorStreamError",
    "StreamBuffer",
    "stream_route",
]

SIDECAR = "sensor.json"
MAX_STREAMS = 64
MAX_SAMPLES_PER_REQUEST = 10_000
_STREAM_ID_CHARS = 128


class SensorStreamError(ValueError):
    """Malformed sensor input (the local API answers 400)."""


class _Runs(Protocol):
    def run(self, feeds: Any) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class SensorConfig:
    """What ``sensor.json`` says about feeding the model."""

    task: str
    input: str
    channels: int
    window: int
    hop: int
    labels: tuple[str, ...]
    input_quantization: tuple[float, int] | None
    output_quantization: tuple[float, int] | None
    horizon: int = 0
    threshold: float = math.inf
    score_mean: tuple[float, ...] = ()
    score_std: tuple[float, ...] = ()

    @property
    def model_steps(self) -> int:
        """Steps the model sees: the window, minus the forecast horizon for anomalies."""
        return self.window - self.horizon

    @classmethod
    def load(cls, model_dir: Path) -> SensorConfig:
        """Raises SensorStreamError when sensor.json is missing or malformed."""
        try:
            data = json.loads((model_dir / SIDECAR).read_text())
            anomaly = data["task"] == "sensor-anomaly"
            config = cls(
                task=str(data["task"]),
                input=str(data["input"]),
                channels=int(data["channels"]),
                window=int(data["window"]),
                hop=int(data["hop"]),
                labels=tuple(str(v) for v in data["labels"]),
                input_quantization=_quant(data.get("input_quantization")),
                output_quantization=_quant(data.get("output_quantization")),
                horizon=int(data["horizon"]) if anomaly else 0,
                threshold=float(data["threshold"]) if anomaly else math.inf,
                score_mean=tuple(float(v) for v in data.get("score_mean", ())),
                score_std=tuple(float(v) for v in data.get("score_std", ())),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SensorStreamError(f"{SIDECAR} is missing or malformed: {e}") from None
        if not (
            0 < config.channels <= 256 and config.hop > 0 and 0 <= config.horizon < config.window
        ):
            raise SensorStreamError(f"{SIDECAR} has impossible sizes")
        if anomaly and len(config.score_std) != config.channels:
            raise SensorStreamError(f"{SIDECAR} needs score_mean/score_std per channel")
        return config


def _quant(value: Any) -> tuple[float, int] | None:
    if value is None:
        return None
    return float(value["scale"]), int(value["zero_point"])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


class SensorModel:
    """Windows -> outputs with the runtime the bundle names (LiteRT for the int8 model)."""

    def __init__(self, model_dir: Path, runtime: _Runs, confidence_threshold: float | None = None):
        self.config = SensorConfig.load(model_dir)
        self.runtime = runtime
        self.confidence_threshold = confidence_threshold

    def window_array(self, window: Any) -> np.ndarray:
        """One window as float32 [channels, window]; raises SensorStreamError."""
        try:
            array = np.asarray(window, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise SensorStreamError(
                f"a window is not a [channel][step] array of numbers: {e}"
            ) from None
        expected = (self.config.channels, self.config.window)
        if array.shape != expected:
            raise SensorStreamError(
                f"a window must be {list(expected)} (channels x steps), got {list(array.shape)}"
            )
        if not np.isfinite(array).all():
            raise SensorStreamError("a window holds NaN or infinite values")
        return array

    def _run(self, context: np.ndarray) -> np.ndarray:
        feed = context[None]
        if self.config.input_quantization is not None:
            scale, zero = self.config.input_quantization
            feed = np.clip(np.round(feed / scale + zero), -128, 127).astype(np.int8)
        raw = self.runtime.run({self.config.input: feed})[0]
        if self.config.output_quantization is not None and raw.dtype == np.int8:
            scale, zero = self.config.output_quantization
            return (raw.astype(np.float32) - zero) * scale
        return np.asarray(raw, dtype=np.float32)

    def predict(self, windows: Sequence[Any]) -> list[dict[str, Any]]:
        """One result per window: {"label", "confidence", "low_confidence", "scores"} for
        classification; {"label", "score", "threshold", "confidence", ...} for anomalies."""
        arrays = [self.window_array(w) for w in windows]
        if self.config.task == "sensor-anomaly":
            return [self._anomaly(a) for a in arrays]
        results = []
        for array in arrays:
            probs = _softmax(self._run(array).reshape(-1))
            best = int(probs.argmax())
            confidence = float(probs[best])
            threshold = self.confidence_threshold
            results.append(
                {
                    "label": self.config.labels[best]
                    if best < len(self.config.labels)
                    else str(best),
                    "confidence": confidence,
                    "low_confidence": threshold is not None and confidence < threshold,
                    "scores": {
                        n: float(p) for n, p in zip(self.config.labels, probs, strict=False)
                    },
                }
            )
        return results

    def _anomaly(self, window: np.ndarray) -> dict[str, Any]:
        h = self.config.horizon
        forecast = self._run(window[:, :-h]).reshape(self.config.channels, h)
        mean = np.asarray(self.config.score_mean, dtype=np.float32)[:, None]
        std = np.asarray(self.config.score_std, dtype=np.float32)[:, None]
        score = float((((window[:, -h:] - mean) / std - forecast) ** 2).mean())
        flagged = score > self.config.threshold
        return {
            "label": "anomaly" if flagged else "normal",
            "score": score,
            "threshold": self.config.threshold,
            # How far the score is from the threshold, squashed to (0.5, 1): telemetry's
            # confidence histogram then shows borderline windows.
            "confidence": 0.5
            + 0.5 * abs(math.tanh(math.log((score + 1e-12) / self.config.threshold))),
            "low_confidence": False,
        }


class StreamBuffer:
    """Samples in, complete windows out: the first after ``window`` samples, then one
    every ``hop`` samples. Holds at most one window of samples."""

    def __init__(self, channels: int, window: int, hop: int) -> None:
        self.channels, self.window, self.hop = channels, window, hop
        self._samples: deque[list[float]] = deque(maxlen=window)
        self._seen = 0
        self._next_end = window

    @property
    def buffered(self) -> int:
        return len(self._samples)

    def push(self, samples: Sequence[Any]) -> list[tuple[int, list[list[float]]]]:
        """Append samples ([channel values] each); returns (end index, window [c][t])
        for every window completed. Raises SensorStreamError on a malformed sample
        (nothing of the request is buffered then)."""
        rows = [self._sample(s) for s in samples]
        done = []
        for row in rows:
            self._samples.append(row)
            self._seen += 1
            if self._seen == self._next_end:
                done.append((self._seen, [list(c) for c in zip(*self._samples, strict=True)]))
                self._next_end += self.hop
        return done

    def _sample(self, sample: Any) -> list[float]:
        if not isinstance(sample, list | tuple) or len(sample) != self.channels:
            raise SensorStreamError(f"each sample must be a list of {self.channels} channel values")
        try:
            values = [float(v) for v in sample]
        except (TypeError, ValueError):
            raise SensorStreamError("sample values must be numbers") from None
        if not all(math.isfinite(v) for v in values):
            raise SensorStreamError("sample values must be finite")
        return values


class _Streams:
    """The local API's open streams, per bundle (a new model starts them afresh)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buffers: dict[tuple[str, str], StreamBuffer] = {}

    def get(self, bundle: str, stream: str, config: SensorConfig) -> StreamBuffer:
        key = (bundle, stream)
        with self.lock:
            if key not in self.buffers:
                if len(self.buffers) >= MAX_STREAMS:
                    # Forget the oldest stream: bounded memory on a small device.
                    self.buffers.pop(next(iter(self.buffers)))
                self.buffers[key] = StreamBuffer(config.channels, config.window, config.hop)
            return self.buffers[key]


_STREAMS: dict[int, _Streams] = {}
_STREAMS_LOCK = threading.Lock()


def _streams_of(api: Any) -> _Streams:
    with _STREAMS_LOCK:
        return _STREAMS.setdefault(id(api), _Streams())


def stream_route(api: Any, body: Any) -> dict[str, Any]:
    """``POST /v1/stream`` for ``tinyfleet_agent.localapi.LocalApi``.

    Raises:
        SensorStreamError: malformed body or samples, or the active model is not a sensor model.
    """
    if not isinstance(body, dict) or not isinstance(body.get("samples"), list):
        raise SensorStreamError('body must be {"stream": "...", "samples": [[...], ...]}')
    stream, samples = body.get("stream", "default"), body["samples"]
    if not isinstance(stream, str) or not 0 < len(stream) <= _STREAM_ID_CHARS:
        raise SensorStreamError(f"stream must be a string of 1..{_STREAM_ID_CHARS} characters")
    if len(samples) > MAX_SAMPLES_PER_REQUEST:
        raise SensorStreamError(f"at most {MAX_SAMPLES_PER_REQUEST} samples per request")
    with api.borrowed_model() as loaded:
        if loaded is None:
            raise SensorStreamError("no model is installed yet")
        predictor, meta = loaded
        sensor = getattr(predictor, "sensor", None)
        if sensor is None:
            raise SensorStreamError("the active model is not a sensor model")
        buffer = _streams_of(api).get(str(meta.get("bundle") or ""), stream, sensor.config)
    completed = buffer.push(samples)
    answer: dict[str, Any] = {"outputs": [], "ends": [], "buffered": buffer.buffered}
    if completed:
        _, answer_body = api.handle("POST", "/v1/predict", {"inputs": [w for _, w in completed]})
        answer.update(answer_body)
        answer["ends"] = [end for end, _ in completed]
    return answer


# -- TensorFlow Lite Micro on the agent -------------------------------------------------

SENSOR_RUNTIME_ENV = "TINYFLEET_AGENT_SENSOR_RUNTIME"


class TflmRuntime:
    """The bundle's int8 model on the TFLite Micro interpreter (``tflite-micro``), in the
    tensor arena measured at training time: what a microcontroller would run, so
    rollouts, self-tests and telemetry exercise the MCU path on a board. Same ``run``
    contract as the other runtimes (raw int8 tensors in and out)."""

    name = "tflite-micro"

    def __init__(self, model_path: Path, arena_bytes: int) -> None:
        try:
            from tflite_micro.python.tflite_micro import runtime
        except ImportError as e:
            raise SensorStreamError(
                "tflite-micro is not installed (pip install --pre tflite-micro)"
            ) from e
        self.version = _distribution_version("tflite-micro")
        self._lock = threading.Lock()
        try:
            self._interp = runtime.Interpreter.from_bytes(
                model_path.read_bytes(), arena_size=arena_bytes
            )
        except (RuntimeError, OSError) as e:
            raise SensorStreamError(
                f"TFLite Micro could not load the model in {arena_bytes} bytes: {e}"
            ) from e
        self.arena_bytes = arena_bytes

    def run(self, feeds: Any) -> list[np.ndarray]:
        (value,) = feeds.values()
        rows = np.asarray(value)
        outputs = []
        with self._lock:
            for row in rows:
                self._interp.set_input(np.ascontiguousarray(row[None]), 0)
                self._interp.invoke()
                outputs.append(np.array(self._interp.get_output(0)))
        return [np.concatenate(outputs)]

    def close(self) -> None:
        self._interp = None


def _distribution_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "0"


def micro_runtime_if_asked(model_dir: Path) -> TflmRuntime | None:
    """A TflmRuntime when the device asks for it (TINYFLEET_AGENT_SENSOR_RUNTIME=
    tflite-micro), else None. Raises SensorStreamError when asked but impossible."""
    import os

    if os.environ.get(SENSOR_RUNTIME_ENV, "") != "tflite-micro":
        return None
    try:
        arena = int(json.loads((model_dir / SIDECAR).read_text())["arena_bytes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SensorStreamError(f"{SIDECAR} has no arena_bytes for TFLite Micro: {e}") from None
    return TflmRuntime(model_dir / "model.tflite", arena)
