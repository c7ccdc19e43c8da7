"""In-process predictions from an installed bundle: `tinyfleet_agent.Predictor`.

    predictor = Predictor(slot_dir, record)          # or a PipelineSpec
    predictor.predict(["turn the lights on"])        # -> [{"label": ..., ...}]

The predictor tokenizes with the bundle's tokenizer.json, runs the model on
the runtime the signed record names and post-processes by task. It never
keeps inputs or outputs: telemetry gets lengths and confidences only.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._internal.record import BundleRecord, PipelineSpec
from ._internal.runtime import (
    Runtime,
    RuntimeLoadError,
    UnsupportedRuntimeError,
    check_runtime,
    load_runtime,
)
from ._internal.slots import Slot
from ._internal.textpipe import TextEncoder, classify, l2_normalize, pool, tag_tokens

__all__ = [
    "InputError",
    "Prediction",
    "Predictor",
    "RuntimeLoadError",
    "UnsupportedRuntimeError",
    "model_file_for",
]

TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")
MAX_INPUT_CHARS = 100_000
MAX_TENSOR_ELEMENTS = 1 << 22
# Embeddings are returned rounded to 8 decimals: far below what changes a
# cosine, and it halves the JSON the local API writes and clients parse
# (~0.25 ms per 384-d vector on a small CPU).
EMBEDDING_DECIMALS = 8
_MODEL_FILES = {
    "onnxruntime": "model.onnx",
    "litert": "model.tflite",
    "tflite-runtime": "model.tflite",
}


class InputError(ValueError):
    """The caller's inputs are malformed (the local API answers 400)."""


@dataclass
class Prediction:
    """Outputs plus the privacy-safe facts telemetry records about them."""

    outputs: list[Any]
    input_lengths: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    low_confidence: int = 0


def model_file_for(runtime: str) -> str:
    """The payload member holding the model for `runtime`."""
    return _MODEL_FILES[runtime]


def _guess_runtime(model_dir: Path) -> str:
    if (model_dir / "model.onnx").is_file():
        return "onnxruntime"
    if (model_dir / "model.tflite").is_file():
        return "tflite-runtime" if not _has("litert") and _has("tflite-runtime") else "litert"
    raise RuntimeLoadError(f"no model.onnx or model.tflite in {model_dir}")


def _has(runtime: str) -> bool:
    try:
        check_runtime(runtime)
    except UnsupportedRuntimeError:
        return False
    return True


class Predictor:
    """A loaded bundle that answers `predict(inputs)`.

    Raises (on construction):
        UnsupportedRuntimeError: the record's runtime is missing or too old.
        RuntimeLoadError: the model or tokenizer could not be loaded.
    """

    def __init__(
        self,
        model_dir: Path | str,
        record_or_spec: BundleRecord | PipelineSpec,
        threads: int = 1,
        *,
        runtime: str | None = None,
        batch_window_ms: float = 0.0,
        max_batch: int = 16,
    ) -> None:
        started = time.perf_counter()
        self.model_dir = Path(model_dir)
        self.record = record_or_spec if isinstance(record_or_spec, BundleRecord) else None
        spec = self.record.pipeline if self.record else record_or_spec
        assert isinstance(spec, PipelineSpec)
        self.spec: PipelineSpec = spec
        name = self.record.runtime if self.record else runtime or _guess_runtime(self.model_dir)
        check_runtime(name, self.record.min_runtime_version if self.record else "0")
        self.runtime: Runtime = load_runtime(name, self.model_dir / model_file_for(name), threads)
        self.output_index = self._output_index()
        self.encoder = self._load_encoder()
        self.sensor = self._load_sensor()
        self.threads = threads
        self._batcher = _Batcher(self, batch_window_ms, max_batch) if batch_window_ms > 0 else None
        self.load_seconds = time.perf_counter() - started

    def _output_index(self) -> int:
        """Where the record's primary output sits among the runtime's outputs.

        Converters decorate names (TFLite's "StatefulPartitionedCall:0"), so an exact
        match wins, then a name ending in the wanted one."""
        wanted = self.spec.output
        names = [o.name for o in self.runtime.outputs]
        if not wanted:
            return 0
        if wanted in names:
            return names.index(wanted)
        for i, name in enumerate(names):
            if name.endswith(wanted) or wanted.endswith(name):
                return i
        raise RuntimeLoadError(f"the model has no output {wanted!r} (it has {names})")

    def _load_encoder(self) -> TextEncoder | None:
        if self.spec.task not in TEXT_TASKS:
            return None
        if self.spec.tokenizer is None:
            raise RuntimeLoadError(f"task {self.spec.task} needs a tokenizer")
        try:
            return TextEncoder(self.model_dir / self.spec.tokenizer, self.spec.max_seq_len)
        except Exception as e:  # tokenizers raises its own exception type
            raise RuntimeLoadError(f"tokenizer could not be loaded: {e}") from e

    def _load_sensor(self) -> Any:
        """The sensor window pipeline (sensorstream) for sensor-* tasks, else None."""
        if not self.spec.task.startswith("sensor-"):
            return None
        from .sensorstream import SensorModel, SensorStreamError, micro_runtime_if_asked

        try:
            micro = micro_runtime_if_asked(self.model_dir)
            if micro is not None:
                # The device runs the MCU path: the self-test then replays on it too.
                self.runtime.close()
                self.runtime = micro  # type: ignore[assignment]
            return SensorModel(self.model_dir, self.runtime, self.spec.confidence_threshold)
        except SensorStreamError as e:
            raise RuntimeLoadError(str(e)) from e

    @classmethod
    def from_slot(cls, slot: Slot, threads: int = 1, **options: Any) -> Predictor:
        """Load the install in `slot` (from the signed record when it has one).

        Raises:
            UnsupportedRuntimeError, RuntimeLoadError: as the constructor.
        """
        record = slot.meta.bundle_record()
        if record is not None:
            return cls(slot.path, record, threads, **options)
        spec = slot.meta.pipeline_spec()
        return cls(slot.path, spec, threads, runtime=slot.meta.runtime, **options)

    @property
    def bundle_id(self) -> str | None:
        return self.record.bundle_id if self.record else None

    def predict(self, inputs: Sequence[Any]) -> list[Any]:
        """Return one result per input (see `predict_detailed`)."""
        return self.predict_detailed(inputs).outputs

    def predict_detailed(self, inputs: Sequence[Any]) -> Prediction:
        """Predict and also return lengths/confidences for telemetry.

        Raises:
            InputError: inputs are not what the task takes.
        """
        if self.sensor is not None:
            return self._predict_sensor(inputs)
        self._validate(inputs)
        if self._batcher is not None and self.encoder is not None:
            return self._batcher.submit(list(inputs))
        return self._predict_now(list(inputs))

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the raw model on already-prepared feeds (the golden self-test); the
        primary output comes first, the others follow in the model's order."""
        outputs = self.runtime.run(feeds)
        index = self.output_index
        return [outputs[index], *outputs[:index], *outputs[index + 1 :]]

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.stop()
        self.runtime.close()

    def _validate(self, inputs: Sequence[Any]) -> None:
        if not isinstance(inputs, list | tuple) or not inputs:
            raise InputError("inputs must be a non-empty list")
        for item in inputs:
            if self.encoder is not None:
                if not isinstance(item, str):
                    raise InputError(f"task {self.spec.task} takes strings")
                if len(item) > MAX_INPUT_CHARS:
                    raise InputError(f"an input is longer than {MAX_INPUT_CHARS} characters")
            elif not isinstance(item, Mapping):
                raise InputError("task tensor takes objects {input name: nested list}")

    def _predict_now(self, inputs: list[Any]) -> Prediction:
        if self.encoder is None:
            return self._predict_tensors(inputs)
        task, spec = self.spec.task, self.spec
        encoded = self.encoder.encode(inputs, details=task == "token-classification")
        first = self.runtime.run(encoded.feeds)[self.output_index]
        if task == "text-embedding":
            vectors = pool(first, encoded.feeds["attention_mask"], spec.pooling)
            if spec.normalize:
                vectors = l2_normalize(vectors)
            rounded = np.round(vectors.astype(np.float64), EMBEDDING_DECIMALS)
            outputs: list[Any] = [{"embedding": v.tolist()} for v in rounded]
            return Prediction(outputs, encoded.lengths)
        if task == "text-classification":
            results = classify(first, spec.labels, spec.confidence_threshold)
            confidences = [r["confidence"] for r in results]
        else:
            results = tag_tokens(first, encoded, spec.labels, spec.confidence_threshold)
            confidences = [_least_confident(r) for r in results]
        low = sum(1 for r in results if r["low_confidence"])
        return Prediction(list(results), encoded.lengths, confidences, low)

    def _predict_sensor(self, inputs: Sequence[Any]) -> Prediction:
        from .sensorstream import SensorStreamError

        if not isinstance(inputs, list | tuple) or not inputs:
            raise InputError("inputs must be a non-empty list of windows")
        try:
            outputs = self.sensor.predict(inputs)
        except SensorStreamError as e:
            raise InputError(str(e)) from None
        steps = self.sensor.config.window
        confidences = [float(o["confidence"]) for o in outputs]
        low = sum(1 for o in outputs if o["low_confidence"])
        return Prediction(outputs, [steps] * len(outputs), confidences, low)

    def _predict_tensors(self, inputs: list[Any]) -> Prediction:
        outputs, sizes = [], []
        names = [o.name for o in self.runtime.outputs]
        for item in inputs:
            feeds = self._tensor_feeds(item)
            try:
                arrays = self.runtime.run(feeds)
            except Exception as e:  # shape/dtype refusals are the caller's error here
                raise InputError(f"the model rejected the input: {e}") from None
            outputs.append({n: a.tolist() for n, a in zip(names, arrays, strict=True)})
            sizes.append(int(sum(a.size for a in feeds.values())))
        return Prediction(outputs, sizes)

    def _tensor_feeds(self, item: Mapping[str, Any]) -> dict[str, np.ndarray]:
        specs = {s.name: s for s in self.runtime.inputs}
        if set(item) != set(specs):
            raise InputError(f"tensor inputs must be exactly {sorted(specs)}")
        feeds = {}
        for name, value in item.items():
            try:
                array = np.asarray(value, dtype=np.dtype(specs[name].dtype))
            except (TypeError, ValueError, OverflowError) as e:
                raise InputError(f"input {name!r} is not a numeric array: {e}") from None
            if array.size > MAX_TENSOR_ELEMENTS:
                raise InputError(f"input {name!r} is larger than {MAX_TENSOR_ELEMENTS} elements")
            if array.ndim == len(specs[name].shape) - 1:
                array = array[None]  # one example without its batch axis
            if array.ndim != len(specs[name].shape):
                raise InputError(f"input {name!r} has the wrong rank {array.ndim}")
            feeds[name] = array
        return feeds


def _least_confident(result: Mapping[str, Any]) -> float:
    return min((float(t["confidence"]) for t in result["tokens"]), default=1.0)


@dataclass
class _Job:
    inputs: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Prediction | None = None
    error: BaseException | None = None


class _Batcher:
    """Groups requests that arrive within `window_ms` into one model call.

    Off by default: at batch 1 on a small CPU, padding to the longest input
    costs more than it saves; it pays off with many concurrent short inputs.
    """

    def __init__(self, predictor: Predictor, window_ms: float, max_batch: int) -> None:
        self._predictor = predictor
        self._window = window_ms / 1000.0
        self._max = max(1, max_batch)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="predict-batcher", daemon=True)
        self._thread.start()

    def submit(self, inputs: list[Any]) -> Prediction:
        job = _Job(inputs)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, size = [first], len(first.inputs)
        deadline = time.monotonic() + self._window
        while size < self._max:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                job = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.inputs)
        return jobs, False

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping = self._collect(first)
            self._run(jobs)
            if stopping:
                return

    def _run(self, jobs: list[_Job]) -> None:
        combined = [item for job in jobs for item in job.inputs]
        try:
            prediction = self._predictor._predict_now(combined)
        except BaseException as e:  # handed to every waiting caller
            for job in jobs:
                job.error = e
                job.done.set()
            return
        start = 0
        for job in jobs:
            end = start + len(job.inputs)
            job.result = _slice(prediction, start, end)
            start = end
            job.done.set()


def _slice(p: Prediction, start: int, end: int) -> Prediction:
    confidences = p.confidences[start:end]
    outputs = p.outputs[start:end]
    low = sum(1 for o in outputs if isinstance(o, dict) and o.get("low_confidence"))
    return Prediction(outputs, p.input_lengths[start:end], confidences, low)
