"""Graph surgery for the int8 candidates: MatMul kinds, activation statistics,
SmoothQuant scales, outlier side paths and saturation-safe re-quantization."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compression.pipeline.auto_int8.candidates import Candidate

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


def matmul_kind(k: int, n: int, shared: bool) -> str:
    """A weight MatMul's kind (``candidates.KINDS``) from its [K, N] shape and whether
    other MatMuls read the same input."""
    if k > n:
        return "down"
    if n > k:
        return "up"
    return "shared" if shared else "single"


def _kind(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> str:
    inits = {i.name: i for i in model.graph.initializer}
    k, n = inits[nodes[0].input[1]].dims
    return matmul_kind(k, n, shared=len(nodes) > 1)


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
    transposed = _gemm_transposed_weights(float_model)
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
        weight = src[base].T if base in transposed else src[base]
        stored_shape = tuple(inits[node.input[1]].dims)
        if zp.dtype != np.int8 or np.any(zp != 0) or weight.shape != stored_shape:
            continue
        q, scale, grown = _pair_safe(weight.astype(np.float64))
        changed += grown
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(q, node.input[1]))
        inits[scale_name].CopyFrom(numpy_helper.from_array(scale.reshape(zp.shape), scale_name))
    return changed


def embedding_rows(quantized: onnx.ModelProto, float_model: onnx.ModelProto) -> int:
    """Re-quantize int8 embedding tables with one scale per row instead of one per table.

    quantize_dynamic gives a Gather'd table a single u8 range, so the rare tokens with
    large vectors set the step for all 30k rows. A row's own scale (symmetric int8) costs
    one float per row (0.5% of the table at width 384) and three small nodes: the rows'
    scales are gathered with the same indices and multiply the gathered int8 rows.
    Returns the number of tables rewritten.
    """
    src = {i.name: i for i in float_model.graph.initializer}
    inits = {i.name: i for i in quantized.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    nodes = list(quantized.graph.node)
    rewritten = 0
    for i, deq in reversed(list(enumerate(nodes))):
        gather = producer.get(deq.input[0]) if deq.op_type == "DequantizeLinear" else None
        if gather is None or gather.op_type != "Gather" or gather.input[0] not in inits:
            continue
        base = gather.input[0].removesuffix("_quantized")
        axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
        if base not in src or axis != 0 or len(src[base].dims) != 2:
            continue
        table = numpy_helper.to_array(src[base]).astype(np.float64)
        scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        inits[gather.input[0]].CopyFrom(numpy_helper.from_array(q, gather.input[0]))
        scale_name = base + "_row_scale"
        quantized.graph.initializer.append(
            numpy_helper.from_array(scale.astype(np.float32), scale_name)
        )
        y = deq.output[0]
        nodes[i : i + 1] = [
            helper.make_node("Gather", [scale_name, gather.input[1]], [y + "_rs"], axis=0),
            helper.make_node("Cast", [deq.input[0]], [y + "_rf"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [y + "_rf", y + "_rs"], [y], name=deq.name + "_Rows"),
        ]
        rewritten += 1
    del quantized.graph.node[:]
    quantized.graph.node.extend(nodes)
    return rewritten


def _gemm_transposed_weights(model: onnx.ModelProto) -> set[str]:
    """Weights of Gemm nodes with transB=1 (a classifier head or pooler exported from
    torch.nn.Linear): quantize_dynamic stores them as MatMulInteger weights transposed,
    [in, out], while the float initializer is [out, in]. A square one (the pooler) has
    the same shape both ways, so the shape alone cannot tell."""
    names = set()
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if trans_b:
                names.add(node.input[1])
    return names


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


def build_candidate(
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
    exclude += list(cand.keep_fp32_nodes)
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
    if cand.embedding_rows:
        quantized = onnx.load(str(out_path))
        tables = embedding_rows(quantized, float_model)
        onnx.save(quantized, str(out_path))
        logs.append(f"{cand.name}: one scale per row in {tables} embedding tables")
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
