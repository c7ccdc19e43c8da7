"""Recipe ``onnx-int8-auto``: accuracy-aware int8 for Transformer encoders.

Plain dynamic int8 quantizes each MatMul's activation with one scale per call.
BERT-style encoders have a few huge activation channels (LayerNorm outputs,
GELU outputs before the FFN down-projection), so that scale is coarse for all
other channels.  On AVX2 CPUs without VNNI, onnxruntime's u8s8 kernel also
saturates (VPMADDUBSW adds two u8*s8 products into int16).  This recipe builds
several candidates, measures each against the parent and returns the fastest
(then smallest) one that meets the fidelity target:

* ``dynamic-per-channel``: quantize_dynamic, per-channel int8 weights.
* ``keep-down-fp32``: the same with the FFN down-projections left in fp32.
* ``nbits8-sensitive``: the most sensitive MatMuls as MatMulNBits 8-bit.
* ``smoothquant``: per-channel activation scales migrated into the weights
  (SmoothQuant, s = max|X|^a / max|W|^(1-a); X/s by a Mul, W*s folded).
* ``smoothquant-outliers``: additionally, the k largest activation channels
  of the chosen MatMuls bypass int8: they are zeroed in the int8 path and
  computed by a tiny fp32 MatMul on just those channels (LLM.int8()-style).

Candidates with signed int8 weights are re-quantized saturation-safe: each
output column's scale is raised until no same-sign pair of adjacent weights
exceeds 128 in magnitude, so u8 activations (<= 255) can never overflow int16.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compression.pipeline import evaluate as ev
from compression.pipeline.benchmark import compare_latency
from compression.pipeline.quantize import (
    QuantizeError,
    copy_sidecars,
    model_input_names,
    op_histogram,
    resolve_onnx,
)
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress
from compression.pipeline.textdata import (
    DatasetError,
    default_sentences,
    encode,
    load_jsonl,
    load_npz,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "AutoInt8Params",
    "Candidate",
    "FidelityTargetError",
    "activation_absmax",
    "quantize_int8_auto",
    "saturation_safe_requantize",
    "smooth_and_split",
]


class FidelityTargetError(RuntimeError):
    """No candidate met the fidelity target; ``candidates`` holds what was measured."""

    def __init__(self, message: str, candidates: list[dict[str, Any]]):
        super().__init__(message)
        self.candidates = candidates


# MatMul kinds, found from the graph rather than from names:
#   "down"   K > N (FFN down-projection, input after GELU)
#   "up"     N > K (FFN up-projection, input after LayerNorm)
#   "shared" square, input shared by several MatMuls (Q/K/V)
#   "single" square, sole consumer (attention output projection)
KINDS = ("down", "up", "shared", "single")


@dataclass(frozen=True)
class Candidate:
    name: str
    smooth_alpha: dict[str, float] = field(default_factory=dict)  # kind -> alpha
    outliers: dict[str, int] = field(default_factory=dict)  # kind -> channels kept fp32
    weight_type: str = "int8"
    saturation_safe: bool = True
    keep_fp32_kinds: tuple[str, ...] = ()
    nbits8_top: int = 0  # most sensitive MatMuls as MatMulNBits 8-bit


_ALL = {k: 0.8 for k in KINDS}
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("dynamic-per-channel", saturation_safe=False),
    Candidate("dynamic-per-channel-satsafe"),
    Candidate("keep-down-fp32", keep_fp32_kinds=("down",), saturation_safe=False),
    Candidate("nbits8-sensitive", nbits8_top=6, saturation_safe=False),
    Candidate("smoothquant-0.8", smooth_alpha=_ALL),
    Candidate("smoothquant-0.8-uint8", smooth_alpha=_ALL, weight_type="uint8"),
    Candidate("smoothquant-0.8-outliers-down8", smooth_alpha=_ALL, outliers={"down": 8}),
    Candidate(
        "smoothquant-0.7-outliers-down16",
        smooth_alpha={k: 0.7 for k in KINDS},
        outliers={"down": 16},
    ),
    Candidate(
        "smoothquant-0.65-outliers-down8-up4",
        smooth_alpha={k: 0.65 for k in KINDS},
        outliers={"down": 8, "up": 4, "shared": 4},
    ),
)


@dataclass(frozen=True)
class AutoInt8Params:
    cosine_mean_min: float = 0.998
    nn_agreement_min: float = 0.97
    accuracy_drop_max_points: float = 1.0
    agreement_min: float = 0.99  # classifiers evaluated without labels
    tensor_rel_error_max: float = 0.01  # other models: mean |err| / mean |ref|
    size_ratio_max: float | None = None
    candidates: tuple[str, ...] = ()  # names from DEFAULT_CANDIDATES; empty = all
    calibration_samples: int = 128
    eval_samples: int = 360
    max_length: int = 128
    latency_sequence_length: int = 64
    latency_rounds: int = 15
    threads: int = 1
    require_target: bool = True
    output_name: str = "model.int8.onnx"


# --------------------------------------------------------------------------
# Graph inspection and activation statistics


def _weight_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Input tensor -> MatMuls with a constant 2-D weight that read it."""
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if (
            node.op_type == "MatMul"
            and node.input[1] in inits
            and len(inits[node.input[1]].dims) == 2
        ):
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _kind(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> str:
    inits = {i.name: i for i in model.graph.initializer}
    k, n = inits[nodes[0].input[1]].dims
    if k > n:
        return "down"
    if n > k:
        return "up"
    return "shared" if len(nodes) > 1 else "single"


def _with_taps(model: onnx.ModelProto, tensors: Sequence[str]) -> bytes:
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    for t in tensors:
        tapped.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return tapped.SerializeToString()


def activation_absmax(
    model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], sensitivity_samples: int = 32
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-channel max |x| of every weight-MatMul input, and each MatMul's
    simulated dynamic-int8 output error (relative MSE) on a few samples.

    The error simulation mirrors onnxruntime dynamic quantization: u8
    asymmetric activations with one range per call, s8 symmetric per-column
    weights.  It ranks MatMuls for the keep-fp32 / MatMulNBits candidates.
    """
    import onnxruntime as ort

    groups = _weight_matmuls(model)
    inits = {i.name: i for i in model.graph.initializer}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(
        _with_taps(model, list(groups)), so, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    absmax: dict[str, np.ndarray] = {}
    err = {n.name: 0.0 for nodes in groups.values() for n in nodes}
    sig = dict.fromkeys(err, 0.0)
    qweights = {
        n.name: _fake_quant_weight(numpy_helper.to_array(inits[n.input[1]]))
        for nodes in groups.values()
        for n in nodes
    }
    for i, feed in enumerate(feeds):
        outs = dict(zip(names, session.run(names, feed), strict=True))
        for x_name, nodes in groups.items():
            x = outs[x_name].reshape(-1, outs[x_name].shape[-1])
            m = np.abs(x).max(axis=0)
            absmax[x_name] = m if x_name not in absmax else np.maximum(absmax[x_name], m)
            if i < sensitivity_samples:
                xq = _fake_quant_activation(x)
                for n in nodes:
                    w = numpy_helper.to_array(inits[n.input[1]])
                    y = x @ w
                    err[n.name] += float(((y - xq @ qweights[n.name]) ** 2).sum())
                    sig[n.name] += float((y**2).sum())
    return absmax, {k: err[k] / max(sig[k], 1e-30) for k in err}


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = np.round(-lo / scale)
    return ((np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)


def _fake_quant_weight(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=0) / 127.0
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)


# --------------------------------------------------------------------------
# Graph rewrites


def smooth_and_split(
    model: onnx.ModelProto,
    absmax: dict[str, np.ndarray],
    alpha: dict[str, float],
    outliers: dict[str, int],
) -> tuple[onnx.ModelProto, list[str]]:
    """SmoothQuant scale migration plus fp32 outlier-channel side paths.

    For each weight-MatMul input X of a kind in ``alpha``: s_j =
    max|X_j|^a / max|W_j|^(1-a) over all MatMuls reading X; X is multiplied by
    1/s (one shared Mul) and each W's rows by s.  For kinds in ``outliers`` the
    k largest channels get 0 in that Mul (so they no longer set the int8
    range) and are added back by ``Gather(X, idx) @ W[idx]`` in fp32.

    Returns the new model and the names of the fp32 side MatMuls, which must
    be excluded from quantization.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    inserts: list[tuple[str, list[onnx.NodeProto]]] = []
    keep_fp32: list[str] = []
    for x, nodes in _weight_matmuls(out).items():
        kind = _kind(out, nodes)
        k = outliers.get(kind, 0)
        if kind not in alpha and not k:
            continue
        a = absmax[x].astype(np.float64)
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float64) for n in nodes]
        s = _smooth_scales(a, weights, alpha.get(kind))
        idx = np.sort(np.argsort(a)[::-1][:k]).astype(np.int64)
        inv = 1.0 / s
        inv[idx] = 0.0
        new_nodes = _smoothing_nodes(out, x, inv, idx)
        inserts.append((x, new_nodes))
        for node, w in zip(nodes, weights, strict=True):
            w_scaled = w * s[:, None]
            w_scaled[idx, :] = 0.0  # these rows now live in the fp32 side path
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array(w_scaled.astype(np.float32), node.input[1])
            )
            node.input[0] = x + "_smooth"
            if k:
                side = _outlier_side_path(out, node, x, w[idx])
                keep_fp32.append(side[0].name)
                inserts.append((node.output[0], side))  # right after this MatMul
    _insert_after_producers(out, inserts)
    return out, keep_fp32


def _smooth_scales(a: np.ndarray, weights: list[np.ndarray], alpha: float | None) -> np.ndarray:
    if alpha is None:
        return np.ones_like(a)
    wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = np.power(np.maximum(a, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)
    # Bounded so a dead channel cannot blow a weight row up (or away).
    return np.asarray(np.clip(s, 1e-2, 1e2))


def _smoothing_nodes(
    model: onnx.ModelProto, x: str, inv: np.ndarray, idx: np.ndarray
) -> list[onnx.NodeProto]:
    model.graph.initializer.append(
        numpy_helper.from_array(inv.astype(np.float32), x + "_smooth_inv")
    )
    nodes = [
        helper.make_node("Mul", [x, x + "_smooth_inv"], [x + "_smooth"], name=x + "_SmoothMul")
    ]
    if idx.size:
        model.graph.initializer.append(numpy_helper.from_array(idx, x + "_outlier_idx"))
        nodes.append(
            helper.make_node(
                "Gather",
                [x, x + "_outlier_idx"],
                [x + "_outliers"],
                name=x + "_OutlierGather",
                axis=-1,
            )
        )
    return nodes


def _outlier_side_path(
    model: onnx.ModelProto, node: onnx.NodeProto, x: str, rows: np.ndarray
) -> list[onnx.NodeProto]:
    y = node.output[0]
    int_path = y + "_int8path"
    node.output[0] = int_path
    w_name = node.input[1] + "_outlier_rows"
    model.graph.initializer.append(numpy_helper.from_array(rows.astype(np.float32), w_name))
    return [
        helper.make_node(
            "MatMul", [x + "_outliers", w_name], [y + "_outl"], name=node.name + "_OutlierMatMul"
        ),
        helper.make_node("Add", [int_path, y + "_outl"], [y], name=node.name + "_OutlierAdd"),
    ]


def _insert_after_producers(
    model: onnx.ModelProto, inserts: list[tuple[str, list[onnx.NodeProto]]]
) -> None:
    """Insert node lists right after the node producing a tensor (keeps topological order)."""
    nodes = list(model.graph.node)
    for tensor, new in inserts:
        pos = next((i + 1 for i, n in enumerate(nodes) if tensor in n.output), 0)
        nodes[pos:pos] = new
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def saturation_safe_requantize(quantized: onnx.ModelProto, float_model: onnx.ModelProto) -> int:
    """Re-quantize s8 per-column MatMulInteger weights so no int16 saturation can occur.

    VPMADDUBSW computes a0*w0 + a1*w1 for adjacent K rows in int16; with u8
    activations (<= 255) that is safe iff same-sign pairs satisfy
    |w0| + |w1| <= 128.  Each column's scale becomes max(max|w|/127,
    max same-sign pair sum/128).  Returns the number of columns whose scale grew.
    """
    src = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    inits = {i.name: i for i in quantized.graph.initializer}
    changed = 0
    for node in quantized.graph.node:
        if node.op_type != "MatMulInteger" or not node.input[1].endswith("_quantized"):
            continue
        base = node.input[1].removesuffix("_quantized")
        scale_name, zp_name = base + "_scale", base + "_zero_point"
        if base not in src or scale_name not in inits or zp_name not in inits:
            continue
        zp = numpy_helper.to_array(inits[zp_name])
        if zp.dtype != np.int8 or np.any(zp != 0) or src[base].ndim != 2:
            continue
        q, scale, grown = _pair_safe(src[base].astype(np.float64))
        changed += grown
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(q, node.input[1]))
        inits[scale_name].CopyFrom(numpy_helper.from_array(scale.reshape(zp.shape), scale_name))
    return changed


def _pair_safe(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    scale = np.abs(w).max(axis=0) / 127.0
    even = w.shape[0] - w.shape[0] % 2
    a, b = w[0:even:2], w[1:even:2]
    pair = np.where(np.sign(a) == np.sign(b), np.abs(a) + np.abs(b), 0.0).max(axis=0, initial=0.0)
    safe = np.maximum(scale, pair / 128.0)
    grown = int((safe > scale * (1 + 1e-9)).sum())
    safe[safe == 0] = 1.0
    q = np.clip(np.round(w / safe), -127, 127).astype(np.int8)
    return q, safe.astype(np.float32), grown


# --------------------------------------------------------------------------
# Candidates


def _build_candidate(
    cand: Candidate,
    model: onnx.ModelProto,
    absmax: dict[str, np.ndarray],
    sensitivity: dict[str, float],
    out_path: Path,
) -> list[str]:
    """Write ``cand`` to ``out_path``; returns log lines."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logs: list[str] = []
    float_model: onnx.ModelProto = model
    exclude: list[str] = []
    if cand.smooth_alpha or cand.outliers:
        float_model, exclude = smooth_and_split(model, absmax, cand.smooth_alpha, cand.outliers)
    groups = _weight_matmuls(model)
    for nodes in groups.values():
        if _kind(model, nodes) in cand.keep_fp32_kinds:
            exclude += [n.name for n in nodes]
    top = sorted(sensitivity, key=lambda k: sensitivity[k], reverse=True)[: cand.nbits8_top]
    quantize_dynamic(
        float_model,
        str(out_path),
        per_channel=True,
        weight_type=QuantType.QUInt8 if cand.weight_type == "uint8" else QuantType.QInt8,
        nodes_to_exclude=exclude + top,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    if cand.saturation_safe and cand.weight_type == "int8":
        quantized = onnx.load(str(out_path))
        grown = saturation_safe_requantize(quantized, float_model)
        onnx.save(quantized, str(out_path))
        logs.append(f"{cand.name}: saturation-safe scales on {grown} columns")
    if top:
        logs.append(_to_nbits8(out_path, top))
    return logs


def _to_nbits8(path: Path, nodes: list[str]) -> str:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(path)),
        bits=8,
        block_size=32,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_include=nodes,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(path))
    return f"MatMulNBits 8-bit: {', '.join(nodes)}"


# --------------------------------------------------------------------------
# Evaluation data


@dataclass
class _EvalSet:
    task: str  # embedding | classifier | tensor
    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    reference: np.ndarray | None = None


def _detect_task(model: onnx.ModelProto, text: bool) -> str:
    out = model.graph.output[0]
    rank = len(out.type.tensor_type.shape.dim)
    if text and (out.name == "last_hidden_state" or rank == 3):
        return "embedding"
    if text and (out.name == "logits" or rank == 2):
        return "classifier"
    return "tensor"


def _text_feeds(
    tokenizer: str, texts: list[str], names: list[str], max_length: int
) -> list[dict[str, np.ndarray]]:
    # Batch 1 and no padding: dynamic quantization picks its range per call,
    # so this is what a device running one request at a time computes.
    enc = encode(tokenizer, texts, max_length=max_length)
    return [enc.row(i).feeds(names) for i in range(len(texts))]


def _npz_feeds(path: str, names: list[str], limit: int) -> list[dict[str, np.ndarray]]:
    arrays = load_npz(path, names)
    count = min(next(iter(arrays.values())).shape[0], limit)
    return [{n: arrays[n][i : i + 1] for n in names} for i in range(count)]


def _load_sets(
    model_path: str,
    model: onnx.ModelProto,
    params: AutoInt8Params,
    tokenizer_path: str | None,
    calibration_path: str | None,
    eval_path: str | None,
    logs: list[str],
) -> tuple[list[dict[str, np.ndarray]], _EvalSet]:
    names = model_input_names(model_path)
    if tokenizer_path is None and (Path(model_path).parent / "tokenizer.json").is_file():
        tokenizer_path = str(Path(model_path).parent / "tokenizer.json")
    if tokenizer_path is None:
        if calibration_path is None:
            raise DatasetError("a model without a tokenizer needs an .npz calibration set")
        calib = _npz_feeds(calibration_path, names, params.calibration_samples)
        evals = _npz_feeds(eval_path or calibration_path, names, params.eval_samples)
        if eval_path is None:
            logs.append("warning: no evaluation set; fidelity measured on the calibration set")
        return calib, _EvalSet("tensor", evals, None)
    labels: np.ndarray | None = None
    if eval_path:
        examples = load_jsonl(eval_path)[: params.eval_samples]
        eval_texts = [e.text for e in examples]
        if examples[0].label is not None:
            labels = np.asarray([e.label for e in examples])
    else:
        eval_texts = default_sentences(params.eval_samples)
    if calibration_path:
        calib_texts = [e.text for e in load_jsonl(calibration_path)]
    else:
        calib_texts = default_sentences(params.calibration_samples * 2, seed=7)
    held_out = set(eval_texts)
    calib_texts = [t for t in calib_texts if t not in held_out][: params.calibration_samples]
    if not calib_texts:
        raise DatasetError("calibration set is empty once evaluation sentences are removed")
    if len(eval_texts) < 2:
        raise DatasetError("evaluation needs at least 2 examples")
    logs.append(
        f"calibration: {len(calib_texts)} texts; evaluation: {len(eval_texts)} texts (disjoint)"
    )
    task = _detect_task(model, text=True)
    calib = _text_feeds(tokenizer_path, calib_texts, names, params.max_length)
    evals = _text_feeds(tokenizer_path, eval_texts, names, params.max_length)
    return calib, _EvalSet(task, evals, labels)


def _outputs(path: str | Path, data: _EvalSet) -> np.ndarray:
    session = ev.open_session(path, 1)
    rows = []
    for feed in data.feeds:
        out = session.run(None, feed)[0].astype(np.float32)
        if data.task == "embedding":
            rows.append(ev.mean_pool(out, feed["attention_mask"])[0])
        else:
            rows.append(out.reshape(-1) if data.task == "tensor" else out[0])
    result = np.stack(rows)
    return ev.l2_normalize(result) if data.task == "embedding" else result


def _fidelity(
    data: _EvalSet, outputs: np.ndarray, params: AutoInt8Params
) -> tuple[dict[str, Any], bool]:
    assert data.reference is not None
    if data.task == "embedding":
        e = ev.embedding_fidelity(data.reference, outputs)
        ok = e.cosine_mean >= params.cosine_mean_min and e.nn_agreement >= params.nn_agreement_min
        return e.to_dict(), ok
    if data.task == "classifier":
        c = ev.classifier_fidelity(data.reference, outputs, data.labels)
        if c.accuracy_drop_points is not None:
            return c.to_dict(), c.accuracy_drop_points <= params.accuracy_drop_max_points
        return c.to_dict(), c.agreement >= params.agreement_min
    t = ev.tensor_fidelity(data.reference, outputs)
    rel = t.mean_abs_error / max(float(np.abs(data.reference).mean()), 1e-12)
    return {**t.to_dict(), "relative_error": rel}, rel <= params.tensor_rel_error_max


# --------------------------------------------------------------------------
# The recipe


def _select(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Fastest passing candidate; within 3% of its latency the smallest; sizes
    within 1% of each other count as equal and the better fidelity wins.

    Latency ratios on a shared CPU wobble by a few percent, and NN agreement
    sits close to its bar, so among near-equal candidates fidelity is the
    tie-breaker that generalises best to unseen inputs.
    """
    passing = [r for r in rows if r["passed"]]
    if not passing:
        return None
    fastest = min(r["latency_ratio"] for r in passing)
    close = [r for r in passing if r["latency_ratio"] <= fastest * 1.03]
    smallest = min(r["size_bytes"] for r in close)
    small = [r for r in close if r["size_bytes"] <= smallest * 1.01]
    return max(small, key=_score)


def _describe(row: dict[str, Any]) -> str:
    fid = row["fidelity"]
    parts = [f"{row['name']}: size {row['size_bytes'] / 1e6:.1f} MB ({row['size_ratio']:.3f}x)"]
    if "cosine_mean" in fid:
        parts.append(
            f"cosine mean {fid['cosine_mean']:.5f} min {fid['cosine_min']:.4f} "
            f"NN agreement {fid['nn_agreement']:.3f}"
        )
    else:
        parts.append(", ".join(f"{k} {v:.4g}" for k, v in fid.items() if isinstance(v, float)))
    parts.append(f"latency {row['latency_ratio']:.3f}x")
    parts.append("PASS" if row["passed"] else "fail")
    return "; ".join(parts)


def _candidates(names: Sequence[str]) -> list[Candidate]:
    by_name = {c.name: c for c in DEFAULT_CANDIDATES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise QuantizeError(f"unknown candidates {unknown}; known: {sorted(by_name)}")
    return [by_name[n] for n in names] if names else list(DEFAULT_CANDIDATES)


def quantize_int8_auto(
    model_path: str,
    output_dir: str,
    params: AutoInt8Params = AutoInt8Params(),
    progress: ProgressFn = no_progress,
    tokenizer_path: str | None = None,
    calibration_path: str | None = None,
    eval_path: str | None = None,
) -> RecipeResult:
    """Build int8 candidates, measure them, return the best one meeting the target.

    Raises:
        QuantizeError: invalid model or unknown candidate names.
        DatasetError: unusable calibration/evaluation data.
        FidelityTargetError: no candidate met the target (``require_target``).
    """
    model_path = str(resolve_onnx(model_path))
    candidates = _candidates(params.candidates)
    logs: list[str] = []
    model = onnx.load(model_path)
    calib, data = _load_sets(
        model_path, model, params, tokenizer_path, calibration_path, eval_path, logs
    )
    progress(0.05, "calibrate", f"activation statistics on {len(calib)} samples")
    absmax, sensitivity = activation_absmax(model, calib)
    ranked = sorted(sensitivity, key=lambda k: sensitivity[k], reverse=True)
    logs.append(
        "most sensitive MatMuls: " + ", ".join(f"{k} ({sensitivity[k]:.2e})" for k in ranked[:6])
    )
    data.reference = _outputs(model_path, data)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parent_size = Path(model_path).stat().st_size
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        rows = _measure_all(
            candidates, model, absmax, sensitivity, data, params, Path(tmp), logs, progress
        )
        progress(0.9, "latency", "interleaved latency vs the parent")
        _add_latency(model_path, rows, params)
        for row in rows:
            row["size_ratio"] = row["size_bytes"] / parent_size
            size_ok = params.size_ratio_max is None or row["size_ratio"] <= params.size_ratio_max
            row["passed"] = row["fidelity_ok"] and size_ok
            logs.append(_describe(row))
        chosen = _select(rows)
        summary = [{k: v for k, v in r.items() if k != "path"} for r in rows]
        if chosen is None and params.require_target:
            raise FidelityTargetError(
                "no int8 candidate met the fidelity target:\n"
                + "\n".join(_describe(r) for r in rows),
                summary,
            )
        best = chosen or max(rows, key=lambda r: _score(r))
        out_path = out_dir / params.output_name
        shutil.copyfile(best["path"], out_path)
    copy_sidecars(model_path, out_dir)
    logs.append(f"chosen: {best['name']} (target met: {chosen is not None})")
    progress(1.0, "done", f"chose {best['name']}")
    pipeline = {"pooling": "mean", "normalize": True} if data.task == "embedding" else {}
    return RecipeResult(
        output_path=str(out_path),
        recipe="onnx-int8-auto",
        params=asdict(params),
        log=logs,
        metrics={
            "chosen": best["name"],
            "target_met": chosen is not None,
            "task": data.task,
            "fidelity": best["fidelity"],
            "size_bytes": best["size_bytes"],
            "size_ratio": best["size_ratio"],
            "latency_ratio": best["latency_ratio"],
            "op_types": op_histogram(out_path),
            "candidates": summary,
        },
        pipeline=pipeline,
    )


def _score(row: dict[str, Any]) -> float:
    fid = row["fidelity"]
    for key in ("cosine_mean", "agreement"):
        if key in fid:
            return float(fid[key])
    return -float(fid.get("relative_error", 1.0))


def _measure_all(
    candidates: list[Candidate],
    model: onnx.ModelProto,
    absmax: dict[str, np.ndarray],
    sensitivity: dict[str, float],
    data: _EvalSet,
    params: AutoInt8Params,
    tmp: Path,
    logs: list[str],
    progress: ProgressFn,
) -> list[dict[str, Any]]:
    rows = []
    for i, cand in enumerate(candidates):
        progress(0.1 + 0.8 * i / len(candidates), f"candidate:{cand.name}", "quantize and evaluate")
        path = tmp / f"{i}.onnx"
        try:
            logs += _build_candidate(cand, model, absmax, sensitivity, path)
        except (ImportError, RuntimeError, ValueError) as exc:
            # One candidate failing (e.g. an optional kernel missing) must not sink the others.
            logs.append(f"{cand.name}: skipped ({type(exc).__name__}: {exc})")
            continue
        fidelity, ok = _fidelity(data, _outputs(path, data), params)
        rows.append(
            {
                "name": cand.name,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "fidelity": fidelity,
                "fidelity_ok": ok,
            }
        )
    if not rows:
        raise QuantizeError("every candidate failed to build; see the log")
    return rows


def _add_latency(model_path: str, rows: list[dict[str, Any]], params: AutoInt8Params) -> None:
    paths = [model_path] + [r["path"] for r in rows]
    med = compare_latency(
        paths,
        rounds=params.latency_rounds,
        threads=params.threads,
        sequence=params.latency_sequence_length,
    )
    base = med[str(model_path)]
    for r in rows:
        r["latency_ratio"] = med[r["path"]] / base
