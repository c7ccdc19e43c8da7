"""Running a model on the TFLite Micro Python interpreter (``tflite-micro``).

Used for what only TFLM can tell: whether every operator has a kernel, the exact
tensor arena the model needs, its outputs for fidelity, and its latency (on this host's
CPU, a relative number, not a microcontroller's).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from compression.pipeline.tflm.params import TflmError, UnsupportedOpsError

__all__ = [
    "ARENA_ALIGNMENT",
    "TFLM_KERNELS",
    "ArenaMeasurement",
    "MicroModel",
    "graph_summary",
    "measure_arena",
    "missing_kernels",
]

# Builtin operators the installed tflite-micro registers (its Register_* symbols,
# tflite-micro 0.dev20261023182759). GELU is absent on purpose: TFLM has no kernel.
_KERNEL_NAMES = """
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL
BATCH_TO_SPACE_ND BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION
CONV_2D COS CUMSUM DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DETECTION_POSTPROCESS
DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR
FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH
IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND LOGICAL_NOT
LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG
NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_MAX REDUCE_MIN RELU RELU6
RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE
SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE
SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV
UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE
"""
TFLM_KERNELS = frozenset(_KERNEL_NAMES.split())
# TFLM aligns the arena start to 16 bytes, so 1-15 bytes below the measured size may
# still fit; 16 below never does.
ARENA_ALIGNMENT = 16
_ARENA_LINE = re.compile(rb"Arena allocation total (\d+) bytes")


@dataclass(frozen=True)
class GraphSummary:
    ops: dict[str, int]
    tensor_types: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    external_buffers: int
    float_tensors: list[str]


def graph_summary(model: bytes) -> GraphSummary:
    """Operators, tensor types, I/O and offset-addressed buffers of a .tflite."""
    from tflite.Model import Model
    from tflite.TensorType import TensorType
    from tflite.utils import BUILTIN_OPCODE2NAME

    types = {v: k for k, v in vars(TensorType).items() if not k.startswith("_")}
    root = Model.GetRootAsModel(model, 0)
    graph = root.Subgraphs(0)
    ops: Counter[str] = Counter()
    for i in range(graph.OperatorsLength()):
        code = root.OperatorCodes(graph.Operators(i).OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        ops[BUILTIN_OPCODE2NAME.get(builtin, f"CUSTOM:{code.CustomCode()!r}")] += 1
    tensor_types = Counter(types[graph.Tensors(i).Type()] for i in range(graph.TensorsLength()))

    def io(index: int) -> dict[str, Any]:
        tensor = graph.Tensors(index)
        return {
            "name": (tensor.Name() or b"").decode(),
            "dtype": types[tensor.Type()],
            "shape": [int(d) for d in tensor.ShapeAsNumpy()],
        }

    float_tensors = [
        (graph.Tensors(i).Name() or b"").decode()
        for i in range(graph.TensorsLength())
        if types[graph.Tensors(i).Type()] == "FLOAT32"
    ]
    external = sum(1 for i in range(root.BuffersLength()) if root.Buffers(i).Offset() > 1)
    return GraphSummary(
        ops=dict(ops),
        tensor_types=dict(tensor_types),
        inputs=[io(int(i)) for i in graph.InputsAsNumpy()],
        outputs=[io(int(i)) for i in graph.OutputsAsNumpy()],
        external_buffers=external,
        float_tensors=float_tensors,
    )


def missing_kernels(ops: dict[str, int]) -> list[str]:
    return sorted(op for op in ops if op not in TFLM_KERNELS)


@contextlib.contextmanager
def _captured_native_output() -> Iterator[list[bytes]]:
    """Collect what native code writes to fd 1 and 2 (print_allocations uses them)."""
    libc = ctypes.CDLL(None)
    captured: list[bytes] = []
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        libc.fflush(None)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            libc.fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read())


class MicroModel:
    """A .tflite on the TFLM interpreter, fed by input *name* with float/int values;
    quantization of inputs and dequantization of the output happen here."""

    def __init__(self, model: bytes, arena_size: int | None = None):
        from tflite_micro.python.tflite_micro import runtime

        summary = graph_summary(model)
        missing = missing_kernels(summary.ops)
        if missing:
            raise UnsupportedOpsError(missing)
        self.model = model
        self.input_names = [_plain(i["name"]) for i in summary.inputs]
        # Generous default: the real need is measured by measure_arena().
        arena = arena_size or _default_arena(model)
        try:
            self.interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena)
        except RuntimeError as exc:
            raise TflmError(f"TFLite Micro could not load the model: {exc}") from exc

    def _set_inputs(self, tensors: dict[str, np.ndarray]) -> None:
        for index, name in enumerate(self.input_names):
            self.interpreter.set_input(tensors[name], index)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self._set_inputs(self.feed_tensors(feed))
        self.interpreter.invoke()
        raw = self.interpreter.get_output(0)
        return _dequantize(raw, self.interpreter.get_output_details(0))

    def feed_tensors(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The exact tensors the firmware writes for ``feed`` (quantized where int8)."""
        return {
            name: _quantize(feed[name], self.interpreter.get_input_details(index))
            for index, name in enumerate(self.input_names)
        }

    def latency_ms(self, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
        tensors = self.feed_tensors(feed)
        self.run(feed)
        samples = []
        for _ in range(runs):
            # The arena reuses input memory for intermediates: inputs are set every run.
            self._set_inputs(tensors)
            start = time.perf_counter()
            self.interpreter.invoke()
            samples.append((time.perf_counter() - start) * 1e3)
        ordered = sorted(samples)
        return {
            "p50_ms": statistics.median(ordered),
            "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        }


def _plain(name: str) -> str:
    """'serving_default_input_ids:0' -> 'input_ids'."""
    bare = name.split(":")[0]
    for candidate in ("input_ids", "attention_mask"):
        if bare.endswith(candidate):
            return candidate
    return bare


def _quantize(value: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    dtype = details["dtype"]
    scales = details["quantization_parameters"]["scales"]
    if dtype in (np.int8, np.int16) and len(scales):
        zero = details["quantization_parameters"]["zero_points"][0]
        info = np.iinfo(dtype)
        q = np.round(value.astype(np.float64) / scales[0] + zero)
        return np.clip(q, info.min, info.max).astype(dtype)
    return value.astype(dtype)


def _dequantize(raw: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    scales = details["quantization_parameters"]["scales"]
    if raw.dtype in (np.int8, np.int16) and len(scales):
        zero = details["quantization_parameters"]["zero_points"][0]
        return ((raw.astype(np.float32) - zero) * scales[0]).astype(np.float32)
    return raw.astype(np.float32)


@dataclass(frozen=True)
class ArenaMeasurement:
    # The smallest arena one inference succeeds in: what firmware must reserve.
    size_bytes: int
    # What print_allocations() reports after an inference. It misses temporary
    # allocations made while kernels prepare, so it can be short of ``bytes``.
    reported_bytes: int


def _default_arena(model: bytes) -> int:
    return max(len(model) * 4, 1 << 20)


def reported_arena(model: bytes, feed: dict[str, np.ndarray]) -> int:
    """The recording allocator's total after one inference (print_allocations)."""
    micro = MicroModel(model)
    micro.run(feed)
    with _captured_native_output() as out:
        micro.interpreter.print_allocations()
    found = _ARENA_LINE.search(b"".join(out))
    if found is None:
        raise TflmError("TFLite Micro printed no arena allocation report")
    return int(found.group(1))


def measure_arena(model: bytes, feed: dict[str, np.ndarray]) -> ArenaMeasurement:
    """The exact tensor arena the model needs on TFLite Micro.

    Starts from print_allocations()'s total; when the model does not run in that
    much, bisects up to the smallest size that does. Then checked: that size runs and
    ARENA_ALIGNMENT bytes less fails.

    Raises:
        TflmError: no report, or sizes that do not behave as measured.
    """
    reported = reported_arena(model, feed)
    if fits(model, feed, reported):
        works, fails = reported, max(0, reported - ARENA_ALIGNMENT)
        if fits(model, feed, fails):
            raise TflmError(f"the model also runs below the reported arena of {reported} bytes")
    else:
        works, fails = _default_arena(model), reported
        while works - fails > 1:
            middle = (works + fails) // 2
            works, fails = (middle, fails) if fits(model, feed, middle) else (works, middle)
    if not fits(model, feed, works) or fits(model, feed, works - ARENA_ALIGNMENT):
        raise TflmError(f"the arena of {works} bytes does not behave as measured")
    return ArenaMeasurement(size_bytes=works, reported_bytes=reported)


def fits(model: bytes, feed: dict[str, np.ndarray], arena_size: int) -> bool:
    """Whether one inference succeeds with exactly ``arena_size`` bytes of arena."""
    # TFLM logs the failed allocation on stderr; keep it out of the job's log.
    with _captured_native_output():
        try:
            MicroModel(model, arena_size=arena_size).run(feed)
        except (RuntimeError, TflmError):
            return False
    return True
