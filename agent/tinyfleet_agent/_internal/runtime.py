"""One small interface over the inference runtimes a device may have.

`onnxruntime` (CPU execution provider), LiteRT (`ai_edge_litert`) and the
older `tflite_runtime` all load a model file and map named numpy feeds to a
list of output arrays. The heavy libraries are imported only when a model is
loaded: asking which runtimes exist reads package metadata, never the
packages themselves, so `status` and the update check stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Runtime",
    "RuntimeLoadError",
    "TensorSpec",
    "UnsupportedRuntimeError",
    "available_runtimes",
    "check_runtime",
    "fit_feeds",
    "load_runtime",
    "onnx_input_specs",
    "restrict_runtimes",
    "version_tuple",
]

# Runtime name (as in the bundle record) -> (distribution names, import module).
_RUNTIMES: dict[str, tuple[tuple[str, ...], str]] = {
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"), "onnxruntime"),
    "litert": (("ai-edge-litert", "ai-edge-litert-nightly"), "ai_edge_litert.interpreter"),
    "tflite-runtime": (("tflite-runtime",), "tflite_runtime.interpreter"),
}
# Exporters name token inputs differently; these suffixes find them anyway.
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Additive attention masks built for TFLite use a large negative, not -inf:
# -inf turns a fully masked row into NaN after softmax.
_MASK_NEGATIVE = -30.0


class UnsupportedRuntimeError(Exception):
    """The runtime a bundle needs is missing or older than its minimum version."""


class RuntimeLoadError(Exception):
    """The runtime could not load the model file."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (None = dynamic) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)


class Runtime(Protocol):
    """A loaded model. `run` is safe to call from several threads."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric components: "2.3.0rc1" -> (2, 3, 0)."""
    parts: list[int] = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


# The operator's `runtimes` setting: None = every installed runtime. Set once at start-up,
# before facts are reported or anything is loaded.
_enabled: frozenset[str] | None = None


def restrict_runtimes(names: Sequence[str] | None) -> None:
    """Use only these runtimes even if others are installed (None: all of them).

    The server picks each device's bundle variant from the runtimes it reports, so an
    agent told "onnxruntime only" is never sent a TFLite bundle.

    Raises:
        ValueError: an unknown runtime name.
    """
    global _enabled
    unknown = sorted(set(names or ()) - set(_RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; known: {sorted(_RUNTIMES)}")
    _enabled = None if names is None else frozenset(names)


def _installed_version(name: str) -> str | None:
    if _enabled is not None and name not in _enabled:
        return None
    distributions, module = _RUNTIMES[name]
    for dist in distributions:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        # Metadata can outlive a half-removed package: check it is importable.
        try:
            found = importlib.util.find_spec(module.split(".")[0]) is not None
        except (ImportError, ValueError):
            found = False
        return version if found else None
    return None


def available_runtimes() -> dict[str, str]:
    """Return {runtime name: version} of the runtimes installed here."""
    found = {name: _installed_version(name) for name in _RUNTIMES}
    return {name: version for name, version in found.items() if version is not None}


def check_runtime(name: str, min_version: str = "0") -> str:
    """Return the installed version of `name` if it is at least `min_version`.

    Raises:
        UnsupportedRuntimeError: unknown, not installed, or too old.
    """
    if name not in _RUNTIMES:
        raise UnsupportedRuntimeError(f"unknown runtime {name!r}")
    if _enabled is not None and name not in _enabled:
        raise UnsupportedRuntimeError(f"runtime {name} is disabled by the runtimes setting")
    version = _installed_version(name)
    if version is None:
        raise UnsupportedRuntimeError(f"runtime {name} is not installed")
    if version_tuple(version) < version_tuple(min_version):
        raise UnsupportedRuntimeError(f"runtime {name} {version} is older than {min_version}")
    return version


def load_runtime(name: str, model_path: Path, threads: int = 1) -> Runtime:
    """Load `model_path` with runtime `name` using `threads` compute threads.

    Raises:
        UnsupportedRuntimeError: the runtime is not installed.
        RuntimeLoadError: the runtime refused the model.
    """
    version = check_runtime(name)
    if threads < 1:
        raise ValueError("threads must be >= 1")
    try:
        if name == "onnxruntime":
            return OrtRuntime(model_path, threads, version)
        return TfliteRuntime(model_path, threads, version, _RUNTIMES[name][1], name)
    except (UnsupportedRuntimeError, MemoryError):
        raise
    except Exception as e:  # runtimes raise their own, undocumented types
        raise RuntimeLoadError(f"{name} could not load {model_path.name}: {e}") from e


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _match_name(wanted: str, available: Sequence[str]) -> str | None:
    """Find the feed for model input `wanted` (exporters decorate names)."""
    if wanted in available:
        return wanted
    for token in _TOKEN_INPUTS:
        if token in wanted and token in available:
            return token
    return None


def _fit_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Order, cast and (for static shapes) pad or truncate feeds to the model."""
    names = list(feeds)
    arrays: list[np.ndarray] = []
    for position, spec in enumerate(specs):
        key = _match_name(spec.name, names)
        if key is None and len(specs) == len(names):
            key = names[position]  # generic names (args_0): fall back to order
        if key is None:
            raise ValueError(f"missing input {spec.name!r}")
        arrays.append(_fit_one(spec, np.asarray(feeds[key]), key))
    return arrays


def _fit_one(spec: TensorSpec, value: np.ndarray, key: str) -> np.ndarray:
    dtype = np.dtype(spec.dtype)
    if "mask" in key and len(spec.shape) == 4 and value.ndim == 2 and dtype.kind == "f":
        # A [batch, seq] 0/1 mask for a graph that wants the additive 4-D form.
        value = ((1.0 - value.astype(np.float32)) * _MASK_NEGATIVE)[:, None, None, :]
    if value.ndim != len(spec.shape):
        wanted = len(spec.shape)
        raise ValueError(f"input {spec.name!r} has rank {value.ndim}, model wants {wanted}")
    value = value.astype(dtype, copy=False)
    if spec.is_static and value.shape != spec.shape:
        value = _pad_or_truncate(value, spec.shape, spec.name)
    return value


def _pad_or_truncate(value: np.ndarray, shape: tuple[int | None, ...], name: str) -> np.ndarray:
    """Fit the last axis (the sequence) to a fixed-shape model; zeros = padding."""
    target = tuple(d or 0 for d in shape)
    if value.shape[:-1] != target[:-1]:
        # Only the sequence (last) axis may differ; anything else is a real mismatch.
        raise ValueError(f"input {name!r} shape {value.shape} does not fit {target}")
    length = target[-1]
    fill = _MASK_NEGATIVE if value.ndim == 4 and value.dtype.kind == "f" else 0
    out = np.full((*value.shape[:-1], length), fill, dtype=value.dtype)
    keep = min(length, value.shape[-1])
    out[..., :keep] = value[..., :keep]
    return out


def fit_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Feeds ordered, cast, padded or cut and masks rebuilt for `specs` (the model's
    inputs), exactly as the device feeds a model; the server evaluates the same way.

    Raises:
        ValueError: an input is missing or cannot be fitted.
    """
    return _fit_feeds(specs, feeds)


def onnx_input_specs(session: Any) -> tuple[TensorSpec, ...]:
    """The inputs of an onnxruntime session as TensorSpecs."""
    return tuple(OrtRuntime._spec(i) for i in session.get_inputs())


class OrtRuntime:
    """onnxruntime on the CPU provider, sequential, with a pinned thread count."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int, version: str) -> None:
        ort: Any = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads == 1:
            # No pool threads to spin; keeps an idle device idle.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.version = version
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.inputs = tuple(self._spec(i) for i in self._session.get_inputs())
        self.outputs = tuple(self._spec(o) for o in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    @staticmethod
    def _spec(node: Any) -> TensorSpec:
        dtype = _ORT_TYPES.get(node.type, "float32")
        return TensorSpec(node.name, tuple(_dim(d) for d in node.shape), dtype)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        rows = _rows(feeds)
        if rows > 1 and self.inputs and all(spec.shape[:1] == (1,) for spec in self.inputs):
            # A graph exported at batch 1 ([1, 64]): one row at a time, as TFLite does.
            parts = [
                self._run_fitted({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(rows)
            ]
            return [np.concatenate(outs) for outs in zip(*parts, strict=True)]
        return self._run_fitted(feeds)

    def _run_fitted(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = _fit_feeds(self.inputs, feeds)
        named = {spec.name: a for spec, a in zip(self.inputs, arrays, strict=True)}
        return list(self._session.run(self._output_names, named))

    def close(self) -> None:
        self._session = None


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    """The batch size of a set of feeds (0 when there are none or they are scalars)."""
    shapes = [np.shape(v) for v in feeds.values()]
    return int(shapes[0][0]) if shapes and shapes[0] else 0


def _clean_tflite_name(name: str) -> str:
    # Converters emit "serving_default_input_ids:0"; keep what the exporter meant.
    return re.sub(r":\d+$", "", name).removeprefix("serving_default_")


class TfliteRuntime:
    """LiteRT or tflite-runtime interpreter (same Python API).

    An interpreter is not thread-safe and holds one set of buffers, so calls
    are serialised; dynamic input shapes are resized per call.
    """

    def __init__(
        self, model_path: Path, threads: int, version: str, module: str, name: str
    ) -> None:
        interpreter_module: Any = importlib.import_module(module)
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self._interp = interpreter_module.Interpreter(
            model_path=str(model_path), num_threads=threads
        )
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.inputs = tuple(self._spec(d) for d in self._in)
        self.outputs = tuple(self._spec(d) for d in self._out)

    @staticmethod
    def _spec(detail: Mapping[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature")
        dims = signature if signature is not None and len(signature) else detail["shape"]
        shape = tuple(_dim(int(d)) for d in dims)
        return TensorSpec(_clean_tflite_name(detail["name"]), shape, np.dtype(detail["dtype"]).name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        rows = _rows(feeds)
        if rows > 1 and all(spec.shape[:1] == (1,) for spec in self.inputs):
            # A fixed batch-1 graph (the tflite recipe's [1, seq_len]): one row at a time.
            parts = [
                self._run_fitted({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(rows)
            ]
            return [np.concatenate(outs) for outs in zip(*parts, strict=True)]
        return self._run_fitted(feeds)

    def _run_fitted(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = _fit_feeds(self.inputs, feeds)
        with self._lock:
            self._resize_if_needed(arrays)
            for detail, array in zip(self._in, arrays, strict=True):
                self._interp.set_tensor(detail["index"], array)
            self._interp.invoke()
            # get_tensor copies: results stay valid after the next invoke.
            return [self._interp.get_tensor(d["index"]) for d in self._out]

    def _resize_if_needed(self, arrays: Sequence[np.ndarray]) -> None:
        resized = False
        for detail, array in zip(self._in, arrays, strict=True):
            if tuple(detail["shape"]) != array.shape:
                self._interp.resize_tensor_input(detail["index"], list(array.shape))
                resized = True
        if resized:
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()
            self._out = self._interp.get_output_details()

    def close(self) -> None:
        self._interp = None
