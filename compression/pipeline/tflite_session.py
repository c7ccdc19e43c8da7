"""A LiteRT interpreter behind the slice of the onnxruntime session API that evaluation,
golden sets and benchmarks use (``get_inputs()``, ``run(None, feeds)``).

TFLite models from the ``tflite`` recipe have a fixed input shape ([1, seq_len] int32),
while evaluation feeds come at each text's own length as int64. The session fits them
the way the device agent does: cast to the model's dtype, pad the sequence axis with
zeros (the [PAD] id and "masked" in a 0/1 mask) or truncate it, and run a batch through
a batch-1 model one row at a time.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TfliteSession", "open_tflite"]

_TYPE_NAMES = {
    np.dtype(np.float32): "tensor(float)",
    np.dtype(np.float16): "tensor(float16)",
    np.dtype(np.int64): "tensor(int64)",
    np.dtype(np.int32): "tensor(int32)",
    np.dtype(np.int8): "tensor(int8)",
    np.dtype(np.uint8): "tensor(uint8)",
    np.dtype(np.bool_): "tensor(bool)",
}


@dataclass(frozen=True)
class TensorInfo:
    """What onnxruntime's NodeArg offers: name, shape (None = dynamic) and type."""

    name: str
    shape: list[int | None]
    type: str
    index: int
    dtype: np.dtype[Any]


def clean_name(raw: str) -> str:
    """``serving_default_input_ids:0`` -> ``input_ids`` (what the exporter meant)."""
    return re.sub(r":\d+$", "", raw).removeprefix("serving_default_")


class TfliteSession:
    """One ai-edge-litert interpreter; calls are serialised (interpreters are not
    thread-safe)."""

    def __init__(self, model_path: str | Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(model_path), num_threads=threads)
        self._interp.allocate_tensors()
        self._lock = threading.Lock()
        self._inputs = [_info(d) for d in self._interp.get_input_details()]
        self._outputs = [_info(d) for d in self._interp.get_output_details()]

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    @property
    def fixed_sequence(self) -> int | None:
        """The static sequence length of a text model's inputs, if it has one."""
        for spec in self._inputs:
            if spec.name == "input_ids" and len(spec.shape) == 2:
                return spec.shape[1]
        return None

    @property
    def vocab_size(self) -> int | None:
        """Rows of the table the first EMBEDDING_LOOKUP (or GATHER) indexes, if any."""
        shapes = {int(d["index"]): d["shape"] for d in self._interp.get_tensor_details()}
        for op in self._interp._get_ops_details():
            if op["op_name"] in ("EMBEDDING_LOOKUP", "GATHER") and len(op["inputs"]) == 2:
                table = op["inputs"][1 if op["op_name"] == "EMBEDDING_LOOKUP" else 0]
                return int(shapes[int(table)][0])
        return None

    def run(self, output_names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run ``feeds`` (any batch size); returns every output, rows concatenated.

        ``output_names`` is accepted for onnxruntime compatibility; all outputs are
        returned in the model's order.
        """
        missing = [s.name for s in self._inputs if s.name not in feeds]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the model takes {self.input_names}")
        rows = int(np.asarray(feeds[self._inputs[0].name]).shape[0])
        if self._inputs[0].shape[0] == 1 and rows > 1:
            parts = [
                self._run_once({k: np.asarray(v)[i : i + 1] for k, v in feeds.items()})
                for i in range(rows)
            ]
            return [np.concatenate(outs) for outs in zip(*parts, strict=True)]
        return self._run_once(feeds)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self._inputs]

    def _run_once(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            for spec in self._inputs:
                value = _fit(spec, np.asarray(feeds[spec.name]))
                if tuple(value.shape) != tuple(self._current_shape(spec)):
                    self._interp.resize_tensor_input(spec.index, list(value.shape))
                    self._interp.allocate_tensors()
                self._interp.set_tensor(spec.index, value)
            self._interp.invoke()
            return [self._interp.get_tensor(o.index) for o in self._outputs]

    def _current_shape(self, spec: TensorInfo) -> list[int]:
        details = self._interp.get_input_details()
        return [int(d) for d in next(d for d in details if d["index"] == spec.index)["shape"]]


def _info(detail: Mapping[str, Any]) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    dtype = np.dtype(detail["dtype"])
    return TensorInfo(
        name=clean_name(str(detail["name"])),
        shape=[int(d) if int(d) >= 0 else None for d in dims],
        type=_TYPE_NAMES.get(dtype, "tensor(float)"),
        index=int(detail["index"]),
        dtype=dtype,
    )


def _fit(spec: TensorInfo, value: np.ndarray) -> np.ndarray:
    """Cast, and pad (zeros) or truncate the last axis of a fixed-shape input."""
    value = value.astype(spec.dtype, copy=False)
    length = spec.shape[-1] if spec.shape else None
    if value.ndim != len(spec.shape):
        raise ValueError(f"input {spec.name!r} has rank {value.ndim}, model wants {spec.shape}")
    if length is None or value.shape[-1] == length:
        return value
    out = np.zeros((*value.shape[:-1], length), dtype=spec.dtype)
    keep = min(length, value.shape[-1])
    out[..., :keep] = value[..., :keep]
    return out


def open_tflite(model_path: str | Path, threads: int = 1) -> TfliteSession:
    return TfliteSession(model_path, threads)
