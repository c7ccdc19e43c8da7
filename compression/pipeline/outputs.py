"""What each output of a model is, and which one every number is measured on.

Third-party exports list their outputs in any order: echoed ``input_ids`` and the mask
first, token states and a pooled embedding later, under names like ``onnx::Shape_422``.
Measuring output [0] of such a graph compares the input with itself and reports a
perfect, meaningless score. So every output gets a *role*, found from the graph
(the op that computes it, its dtype and rank) and from one probe run (an output equal
to an input is an echo), and each task gets a *primary output* chosen by role.

Roles: ``echo`` (a copy of an input), ``mask``, ``token-states`` (float, rank 3),
``pooled`` (float, rank 2, one vector per text), ``logits`` (scores or probabilities),
``label-ids`` (integers from ArgMax/TopK), ``state`` (a recurrent state handed back to
the next call), ``other``. Echo and mask are never measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MEASURABLE_ROLES",
    "ROLES",
    "annotate_outputs",
    "choose_primary",
    "graph_roles",
    "output_index",
    "probe_feeds",
    "probe_roles",
]

ROLES = ("echo", "mask", "token-states", "pooled", "logits", "label-ids", "state", "other")
MEASURABLE_ROLES = ("token-states", "pooled", "logits", "label-ids", "state", "other")
TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")

# Per task, the roles a primary output may have, best first. Pooled before token states
# (the embedding the model's author pooled is the one users get); logits before label ids
# (ids hide how close a decision was, and fidelity on scores is more sensitive).
_PREFERENCE: dict[str, tuple[str, ...]] = {
    "text-embedding": ("pooled", "token-states", "other", "logits"),
    "text-classification": ("logits", "label-ids", "other"),
    "token-classification": ("logits", "token-states", "label-ids", "other"),
    "tensor": ("logits", "pooled", "token-states", "other", "label-ids", "state"),
}
# Ops that only move or relabel data: an ArgMax behind them still makes label ids.
_PASS_THROUGH = {"Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten"}
_SCORE_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
_SCORE_NAMES = ("logit", "prob", "score")
_STATE_NAMES = ("cache", "present.", "present_")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")


def _is_int(dtype: str | None) -> bool:
    return dtype in _INT_DTYPES


def _is_float(dtype: str | None) -> bool:
    return bool(dtype) and str(dtype).startswith(("float", "bfloat"))


def graph_roles(model_path: str | Path) -> dict[str, tuple[str, str]]:
    """Roles an ONNX graph's structure proves: {output name: (role, why)}.

    Only certain facts: an output that *is* a graph input, or an integer output computed
    by ArgMax/TopK, or scores from Softmax/Sigmoid. The rest is left to `annotate_outputs`.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input}
    found: dict[str, tuple[str, str]] = {}
    for output in graph.output:
        name, hops = output.name, 0
        while True:
            if name in inputs:
                found[output.name] = ("echo", f"copies input {name!r}")
                break
            node = producers.get(name)
            if node is None or hops > 16:
                break
            if node.op_type == "ArgMax" or (node.op_type == "TopK" and name == node.output[1]):
                found[output.name] = ("label-ids", f"computed by {node.op_type}")
                break
            if node.op_type in _SCORE_OPS:
                found[output.name] = ("logits", f"computed by {node.op_type}")
                break
            if node.op_type not in _PASS_THROUGH or not node.input:
                break
            name, hops = node.input[0], hops + 1
    return found


def _probe_dim(dim: Any, axis: int, rank: int, is_float: bool, first_dynamic: int) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    if axis == first_dynamic and rank > 1:
        return 1  # the batch (a state may keep it second: [layers, batch, width])
    # A [batch, samples] float input is audio: 512 samples is one 32 ms frame at 16 kHz.
    # Otherwise 32 suits a token sequence and an image side a strided CNN divides.
    return 512 if is_float and rank == 2 else 32


def probe_feeds(
    inputs: Sequence[Mapping[str, Any]], seed: int = 11, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """One plausible feed per input from its name, dtype and shape (dynamic dims filled).

    Token ids are distinct, so a copied input is recognisable; masks are all ones (or
    all zeros for a float additive mask: nothing masked); a scalar sample rate is 16 kHz.
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        name, dtype = str(spec["name"]), str(spec.get("dtype") or "float32")
        shape_in = spec.get("shape") or []
        lowered = name.lower()
        audio = _is_float(dtype) and "mask" not in lowered
        dynamic = [i for i, d in enumerate(shape_in) if not (isinstance(d, int) and d > 0)]
        first = dynamic[0] if dynamic else -1
        shape = [_probe_dim(d, i, len(shape_in), audio, first) for i, d in enumerate(shape_in)]
        value: np.ndarray
        if _is_int(dtype):
            if "mask" in lowered:
                value = np.ones(shape)
            elif "type" in lowered:
                value = np.zeros(shape)
            elif not shape and lowered in ("sr", "sample_rate", "sampling_rate"):
                value = np.asarray(16000)
            else:
                # Small ids fit any vocabulary or byte table and are distinct enough to
                # recognise a copied input.
                value = rng.integers(1, 100, size=shape) if shape else np.asarray(1)
        elif "mask" in lowered:
            value = np.zeros(shape) if len(shape) == 4 else np.ones(shape)
        else:
            value = rng.standard_normal(shape)
        feeds[name] = value.astype(np.dtype(dtype) if dtype != "bool" else np.bool_)
    return feeds


def probe_roles(model_path: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the ONNX model once on `probe_feeds`; report outputs equal to an input.

    Returns {"echo": {output: input}, "shapes": {output: shape}} or {"error": why} when
    the model would not run on guessed inputs (the graph's own facts still apply).
    Runs in the converter subprocess (``probe-outputs``): a model may crash its runtime.
    """
    from compression.pipeline.evaluate import open_session

    try:
        session = open_session(model_path)
        feeds = probe_feeds(inputs)
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
    except Exception as exc:  # any refusal of guessed inputs: fall back to the graph
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    echo: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for name, value in zip(names, results, strict=True):
        array = np.asarray(value)
        shapes[name] = list(array.shape)
        for input_name, fed in feeds.items():
            if array.shape == fed.shape and array.size > 1 and np.array_equal(array, fed):
                echo[name] = input_name
                break
    return {"echo": echo, "shapes": shapes}


def _is_state(lowered: str, dtype: str | None, inputs: Sequence[Mapping[str, Any]]) -> bool:
    if not _is_float(dtype):
        return False
    float_inputs = [str(i["name"]).lower() for i in inputs if _is_float(i.get("dtype"))]
    # "stateN" for input "state", "h_out" for "h": the next call's input.
    if any(lowered != n and lowered.startswith(n) for n in float_inputs):
        return True
    if any(s in lowered for s in _STATE_NAMES):
        return True
    stateful = any("state" in n for n in float_inputs)
    return stateful and "state" in lowered and "hidden_state" not in lowered


def _shape_role(
    out: Mapping[str, Any], task: str, inputs: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    name, dtype = str(out["name"]), out.get("dtype")
    lowered = name.lower()
    rank = len(out["shape"]) if out.get("shape") is not None else None
    if "mask" in lowered and (_is_int(dtype) or rank == 2):
        return "mask", "named like a mask"
    if _is_state(lowered, dtype, inputs):
        return "state", "a recurrent state handed to the next call"
    if _is_int(dtype):
        return "other", f"integer output ({dtype})"
    if any(s in lowered for s in _SCORE_NAMES):
        return "logits", "named like scores"
    text = task in TEXT_TASKS
    if text and rank == 3:
        if task == "token-classification" and "hidden" not in lowered:
            return "logits", "per-token scores of a token classifier"
        return "token-states", "float, one vector per token"
    if text and rank == 2:
        if task == "text-classification":
            return "logits", "float, one score per class"
        return "pooled", "float, one vector per text"
    if "pool" in lowered or "embedding" in lowered:
        return "pooled", "named like a pooled embedding"
    return "other", "no role recognised"


def annotate_outputs(
    inspection: dict[str, Any],
    task: str,
    graph: Mapping[str, tuple[str, str]] | None = None,
    probe: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Add "role" and "role_reason" to each output and choose the primary output.

    `graph` comes from `graph_roles`, `probe` from `probe_roles` (both optional: TFLite
    and folders have neither). Returns the inspection with "primary_output" and
    "primary_reason" set (primary None when no output can be measured).
    """
    graph = graph or {}
    echoes = dict((probe or {}).get("echo") or {})
    inputs = inspection.get("inputs") or []
    outputs = []
    for out in inspection.get("outputs") or []:
        entry = dict(out)
        name = str(out["name"])
        if name in echoes:
            masked = "mask" in echoes[name].lower()
            role, why = ("mask" if masked else "echo"), f"equal to input {echoes[name]!r}"
        elif name in graph:
            role, why = graph[name]
            if role == "echo" and "mask" in name.lower():
                role = "mask"
        else:
            role, why = _shape_role(out, task, inputs)
        entry["role"], entry["role_reason"] = role, why
        outputs.append(entry)
    result = {**inspection, "outputs": outputs}
    if probe and probe.get("error"):
        result["probe_error"] = probe["error"]
    primary, reason = choose_primary(task, outputs)
    result["primary_output"], result["primary_reason"] = primary, reason
    return result


def choose_primary(task: str, outputs: Iterable[Mapping[str, Any]]) -> tuple[str | None, str]:
    """(name, why) of the output a task is measured and served on; (None, why) if none."""
    listed = list(outputs)
    preference = _PREFERENCE.get(task, _PREFERENCE["tensor"])
    for role in preference:
        for out in listed:
            if out.get("role") == role:
                return str(out["name"]), f"the {role} output ({task})"
    skipped = ", ".join(f"{o['name']} ({o.get('role')})" for o in listed) or "none"
    return None, f"no output can be measured for {task}: {skipped}"


def output_index(names: Sequence[str], primary: str | None) -> int:
    """Index of `primary` among a runtime's output names (0 when unset).

    Converters rename (TFLite adds "StatefulPartitionedCall:0"), so an exact match wins,
    then a name that ends with the primary's.

    Raises:
        ValueError: the primary output is not among the names.
    """
    if not primary:
        return 0
    if primary in names:
        return list(names).index(primary)
    for i, name in enumerate(names):
        if name.endswith(primary) or primary.endswith(name):
            return i
    raise ValueError(f"output {primary!r} is not among the model's outputs {list(names)}")


_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def input_dicts(session: Any) -> list[dict[str, Any]]:
    """{"name", "dtype", "shape"} of a session's inputs (as the inspection lists them)."""
    return [
        {
            "name": spec.name,
            "dtype": _ORT_DTYPES.get(spec.type, "float32"),
            "shape": [d if isinstance(d, int) and d > 0 else None for d in spec.shape],
        }
        for spec in session.get_inputs()
    ]
