"""Describe an uploaded model as JSON: inputs, outputs, parameters and ops.

Every result has the keys "format", "inputs", "outputs", "parameters" (int) and
"ops" ({op name: count}); each format adds its own details. Nothing here runs
the model or reads weight bytes it does not need: ONNX is loaded without its
external data, TFLite is memory-mapped, safetensors are read header-only.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from compression.pipeline.errors import InvalidModelError
from compression.pipeline.formats import (
    HF_DIR,
    ONNX,
    TFLITE,
    check_tflite_header,
    find_model_dir,
    model_root,
    shard_names,
)
from compression.pipeline.onnx_scan import scan_onnx

Json = dict[str, Any]
_MAX_JSON = 64 * 1024 * 1024
# safetensors caps its JSON header at 100 MB; anything larger is not one.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_SYMBOLIC_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# ONNX names two element types differently from numpy/TFLite; report one vocabulary.
_ONNX_DTYPE_ALIASES = {"float": "float32", "double": "float64", "string": "string"}


def inspect_model(path: Path, fmt: str) -> Json:
    """Inspect a model file (.onnx/.tflite) or an extracted model folder.

    Raises:
        InvalidModelError: the model is malformed or fmt is unknown.
    """
    if fmt == ONNX:
        model_file = _onnx_file(path)
        return {**_inspect_onnx(model_file), "tokenizer": _beside(path, model_file)}
    if fmt == TFLITE:
        model_file = _onnx_file(path) if path.is_dir() else path
        return {**_inspect_tflite(model_file), "tokenizer": _beside(path, model_file)}
    if fmt == HF_DIR:
        return _inspect_hf(find_model_dir(path) if path.is_dir() else path)
    raise InvalidModelError(f"Unknown model format {fmt!r}; expected onnx, tflite or hf-dir.")


def _beside(upload: Path, model_file: Path) -> Json:
    """Tokenizer files shipped with a graph: only a zip (a folder here) can carry them."""
    if not upload.is_dir():
        return {"present": False, "type": None, "class": None, "files": []}
    return tokenizer_info(model_file.parent)


def _onnx_file(path: Path) -> Path:
    found = model_root(path) if path.is_dir() else path
    if found.is_dir():
        raise InvalidModelError("The upload holds no single .onnx file to inspect.")
    return found


# ----------------------------------------------------------------------- ONNX


def _value_info(value: Any) -> Json:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"name": value.name, "dtype": kind or "unknown", "shape": None}
    from onnx import TensorProto

    tensor = value.type.tensor_type
    raw = TensorProto.DataType.Name(tensor.elem_type).lower()
    dtype = _ONNX_DTYPE_ALIASES.get(raw, raw)
    shape: list[int | str | None] | None = None
    if tensor.HasField("shape"):
        shape = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim
        ]
    return {"name": value.name, "dtype": dtype, "shape": shape}


def _elements(dims: Any) -> int:
    return math.prod(max(int(d), 0) for d in dims)


_QUANT_OPS = (
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QLinearMatMul",
    "QLinearConv",
    "MatMulNBits",
    "DequantizeLinear",
)
_INT8_TYPES = (3, 2, 22)  # TensorProto INT8, UINT8, INT4


def already_quantized(model: Any) -> str:
    """Why the graph already is int8 ("" when it is not): quantized ops, or int8 weight
    tensors a Cast turns back into floats (weight-only int8)."""
    ops = Counter(n.op_type for n in model.graph.node)
    found = [f"{ops[op]} {op}" for op in _QUANT_OPS if ops.get(op)]
    if found:
        return "int8 operators: " + ", ".join(found)
    weights = [
        t
        for t in model.graph.initializer
        if t.data_type in _INT8_TYPES and len(t.dims) >= 2 and math.prod(t.dims) >= 1024
    ]
    if weights and ops.get("Cast"):
        return f"weight-only int8: {len(weights)} int8 weight tensors dequantized by Cast/Mul"
    return ""


def _graph_parameters(graph: Any) -> int:
    """Weights in initializers, sparse initializers and Constant nodes, counted inside
    If/Loop/Scan subgraphs too (stateful exports keep every weight in an If branch;
    paddle2onnx stores them as Constant nodes). Scalars and shape constants count as 1
    or a few each, which is noise next to real weights."""
    total = sum(_elements(t.dims) for t in graph.initializer)
    total += sum(_elements(s.values.dims) for s in graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                total += _graph_parameters(attr.g)
            for sub in attr.graphs:
                total += _graph_parameters(sub)
            if node.op_type == "Constant" and attr.name == "value" and attr.HasField("t"):
                total += _elements(attr.t.dims)
    return total


def _inspect_onnx(path: Path) -> Json:
    import onnx

    scan = scan_onnx(path, base_dir=path.parent)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InvalidModelError(
            f"The ONNX model could not be read ({type(exc).__name__}). Export it again."
        ) from exc
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    params = _graph_parameters(graph)
    ext_files = [
        {"location": loc, "bytes": (path.parent / loc).stat().st_size}
        for loc in scan.external_locations
    ]
    return {
        "format": ONNX,
        "ir_version": model.ir_version,
        "opset_imports": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer_name": model.producer_name,
        "producer_version": model.producer_version,
        "graph_name": graph.name,
        # Before IR 4 initializers were also listed as graph inputs; skip them.
        "inputs": [_value_info(v) for v in graph.input if v.name not in init_names],
        "outputs": [_value_info(v) for v in graph.output],
        "parameters": int(params),
        "ops": dict(Counter(n.op_type for n in graph.node).most_common()),
        "nodes": len(graph.node),
        "external_data": {"files": ext_files, "bytes": sum(f["bytes"] for f in ext_files)},
        "quantized": already_quantized(model),
    }


# --------------------------------------------------------------------- TFLite


def _tflite_corrupt(detail: str) -> InvalidModelError:
    return InvalidModelError(
        f"The TFLite model is corrupt ({detail}). Convert it again and upload the .tflite file."
    )


def _bounded(count: int, limit: int, what: str) -> range:
    # A forged vector length could make us loop for hours; each element takes
    # at least one byte of the file, so a longer vector cannot be genuine.
    if not 0 <= count <= limit:
        raise _tflite_corrupt(f"{what} vector length {count} exceeds the file")
    return range(count)


def _tflite_names() -> tuple[dict[int, str], dict[int, str]]:
    from tflite.TensorType import TensorType
    from tflite.utils import BUILTIN_OPCODE2NAME

    types = {v: k.lower() for k, v in vars(TensorType).items() if isinstance(v, int)}
    return dict(BUILTIN_OPCODE2NAME), types


def _tflite_quant(tensor: Any, limit: int) -> Json | None:
    quant = tensor.Quantization()
    if quant is None or quant.ScaleLength() == 0:
        return None
    scales = [float(quant.Scale(i)) for i in _bounded(quant.ScaleLength(), limit, "scale")]
    zeros = [int(quant.ZeroPoint(i)) for i in _bounded(quant.ZeroPointLength(), limit, "zero")]
    return {"scale": scales, "zero_point": zeros, "quantized_dimension": quant.QuantizedDimension()}


def _tflite_tensor(tensor: Any, types: dict[int, str], limit: int) -> Json:
    dims: list[int | None] = [
        int(tensor.Shape(i)) for i in _bounded(tensor.ShapeLength(), limit, "shape")
    ]
    sig_len = tensor.ShapeSignatureLength()
    if sig_len:
        sig = [int(tensor.ShapeSignature(i)) for i in _bounded(sig_len, limit, "shape")]
        dims = [d if d >= 0 else None for d in sig]  # -1 marks a dynamic dimension
    return {
        "name": (tensor.Name() or b"").decode("utf-8", "replace"),
        "dtype": types.get(tensor.Type(), f"type_{tensor.Type()}"),
        "shape": dims,
        "quantization": _tflite_quant(tensor, limit),
    }


def _tflite_opcodes(model: Any, names: dict[int, str], limit: int) -> list[tuple[str, int]]:
    codes = []
    for i in _bounded(model.OperatorCodesLength(), limit, "operator code"):
        oc = model.OperatorCodes(i)
        # Codes above 127 live only in builtin_code; old files only in the
        # deprecated int8 field, so the larger of the two is the real one.
        code = max(int(oc.DeprecatedBuiltinCode()), int(oc.BuiltinCode()))
        name = names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (oc.CustomCode() or b"").decode("utf-8", "replace")
        codes.append((name, int(oc.Version())))
    return codes


def _tflite_metadata(model: Any, limit: int) -> dict[str, str]:
    out: dict[str, str] = {}
    n_buffers = model.BuffersLength()
    for i in _bounded(model.MetadataLength(), limit, "metadata"):
        meta = model.Metadata(i)
        name = (meta.Name() or b"").decode("utf-8", "replace")
        index = meta.Buffer()
        if name == "min_runtime_version" and 0 < index < n_buffers:
            buf = model.Buffers(index)
            raw = bytes(buf.Data(j) for j in _bounded(min(buf.DataLength(), 64), 64, "meta"))
            out[name] = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        else:
            out[name] = ""
    return out


def _tflite_parameters(model: Any, limit: int) -> int:
    n_buffers = model.BuffersLength()
    seen: set[int] = set()
    total = 0
    for s in _bounded(model.SubgraphsLength(), limit, "subgraph"):
        sub = model.Subgraphs(s)
        for t in _bounded(sub.TensorsLength(), limit, "tensor"):
            tensor = sub.Tensors(t)
            index = tensor.Buffer()
            if index <= 0 or index >= n_buffers or index in seen:
                continue
            buf = model.Buffers(index)
            # Models over 2 GB keep buffers after the flatbuffer (offset > 1).
            if buf.DataLength() > 0 or buf.Offset() > 1:
                seen.add(index)
                shape = [tensor.Shape(i) for i in _bounded(tensor.ShapeLength(), limit, "shape")]
                total += math.prod(max(int(d), 0) for d in shape)
    return total


def _inspect_tflite(path: Path) -> Json:
    check_tflite_header(path)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _read_tflite(buf, len(buf))
        except (IndexError, struct.error, TypeError, ValueError, AttributeError) as exc:
            raise _tflite_corrupt(type(exc).__name__) from exc


def _read_tflite(buf: mmap.mmap, limit: int) -> Json:
    from tflite.Model import Model

    names, types = _tflite_names()
    model = Model.GetRootAs(buf, 0)
    opcodes = _tflite_opcodes(model, names, limit)
    ops: Counter[str] = Counter()
    for s in _bounded(model.SubgraphsLength(), limit, "subgraph"):
        sub = model.Subgraphs(s)
        for o in _bounded(sub.OperatorsLength(), limit, "operator"):
            index = sub.Operators(o).OpcodeIndex()
            if not 0 <= index < len(opcodes):
                raise _tflite_corrupt(f"operator {o} uses unknown opcode {index}")
            ops[opcodes[index][0]] += 1
    if model.SubgraphsLength() == 0:
        raise _tflite_corrupt("it has no subgraph")
    main = model.Subgraphs(0)
    n_tensors = main.TensorsLength()

    def io(indices: list[int]) -> list[Json]:
        if any(not 0 <= i < n_tensors for i in indices):
            raise _tflite_corrupt("an input or output names a missing tensor")
        return [_tflite_tensor(main.Tensors(i), types, limit) for i in indices]

    versions: dict[str, list[int]] = {}
    for name, version in opcodes:
        versions.setdefault(name, []).append(version)
    metadata = _tflite_metadata(model, limit)
    return {
        "format": TFLITE,
        "schema_version": int(model.Version()),
        "description": (model.Description() or b"").decode("utf-8", "replace"),
        "subgraphs": int(model.SubgraphsLength()),
        "inputs": io([main.Inputs(i) for i in _bounded(main.InputsLength(), limit, "input")]),
        "outputs": io([main.Outputs(i) for i in _bounded(main.OutputsLength(), limit, "output")]),
        "parameters": _tflite_parameters(model, limit),
        "ops": dict(ops.most_common()),
        "op_versions": {k: sorted(set(v)) for k, v in versions.items()},
        "min_runtime_version": metadata.get("min_runtime_version"),
        "metadata": sorted(metadata),
    }


# ---------------------------------------------------------------- HF folder


def _read_json_file(path: Path) -> Any:
    if path.stat().st_size > _MAX_JSON:
        raise InvalidModelError(f"{path.name} is too large to be a model file.")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path.name} is not valid JSON ({exc}); re-save it.") from exc


def safetensors_header(path: Path) -> dict[str, Json]:
    """Read and check a safetensors JSON header without reading tensor bytes.

    Returns {tensor name: {"dtype", "shape", "data_offsets"}}.

    Raises:
        InvalidModelError: the header is missing, oversized, not JSON, or its
            entries do not fit the file.
    """
    size = path.stat().st_size

    def bad(detail: str) -> InvalidModelError:
        return InvalidModelError(
            f"{path.name} is not a valid safetensors file ({detail}). "
            "Save the weights with safetensors (save_pretrained does) and upload again."
        )

    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad("too short")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise bad("header length out of range")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_size = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        _check_safetensors_entry(name, entry, data_size, bad)
    return tensors


def _check_safetensors_entry(name: str, entry: Any, data_size: int, bad: Any) -> None:
    if not isinstance(entry, dict):
        raise bad(f"entry {name!r} is not an object")
    shape, offsets, dtype = entry.get("shape"), entry.get("data_offsets"), entry.get("dtype")
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad(f"entry {name!r} lacks dtype, shape or data_offsets")
    ints = [*shape, *offsets]
    if len(offsets) != 2 or any(type(x) is not int or x < 0 for x in ints):
        raise bad(f"entry {name!r} has invalid shape or offsets")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise bad(f"entry {name!r} points past the end of the file")
    itemsize = _SAFETENSORS_ITEMSIZE.get(dtype)
    if itemsize is not None and end - begin != math.prod(shape) * itemsize:
        raise bad(f"entry {name!r} size does not match its shape and dtype")


def _weight_files(root: Path) -> list[Path]:
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    index_path = root / "model.safetensors.index.json"
    if not index_path.is_file():
        raise InvalidModelError(
            "The folder has no model.safetensors or model.safetensors.index.json. "
            "Save the model with save_pretrained(..., safe_serialization=True)."
        )
    index = _read_json_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelError("model.safetensors.index.json has no weight_map; re-save it.")
    files = [root / name for name in shard_names(weight_map)]
    for file in files:
        if not file.is_file() or not file.resolve().is_relative_to(root.resolve()):
            raise InvalidModelError(f"The weight shard {file.name!r} is missing from the upload.")
    return files


def _config_value(config: dict[str, Any], *keys: str) -> Any:
    # Architectures name the same hyper-parameter differently (BERT, GPT-2, T5, DistilBERT).
    return next((config[k] for k in keys if isinstance(config.get(k), int)), None)


def tokenizer_info(root: Path) -> Json:
    """Which tokenizer files a folder holds, and the tokenizer's kind."""
    names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    files = [f for f in names if (root / f).is_file()]
    kind = None
    if "tokenizer.json" in files:
        data = _read_json_file(root / "tokenizer.json")
        model = data.get("model") if isinstance(data, dict) else None
        kind = model.get("type") if isinstance(model, dict) else None
    elif "vocab.txt" in files:
        kind = "WordPiece"
    cls = None
    if "tokenizer_config.json" in files:
        tok_config = _read_json_file(root / "tokenizer_config.json")
        cls = tok_config.get("tokenizer_class") if isinstance(tok_config, dict) else None
    present = "tokenizer.json" in files or "vocab.txt" in files
    return {"present": present, "type": kind, "class": cls, "files": files}


def _inspect_hf(root: Path) -> Json:
    config = _read_json_file(root / "config.json") if (root / "config.json").is_file() else None
    if not isinstance(config, dict):
        raise InvalidModelError(
            "The folder has no usable config.json. Upload the folder written by "
            "save_pretrained (config.json, model.safetensors, tokenizer files), zipped."
        )
    params, dtypes, n_tensors = 0, Counter[str](), 0
    for file in _weight_files(root):
        for entry in safetensors_header(file).values():
            params += math.prod(entry["shape"])
            dtypes[entry["dtype"]] += 1
            n_tensors += 1
    hidden = _config_value(config, "hidden_size", "d_model", "n_embd", "dim")
    names = list(_SYMBOLIC_INPUTS if config.get("type_vocab_size") else _SYMBOLIC_INPUTS[:2])
    inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in names]
    out_shape = ["batch", "sequence", hidden]
    return {
        "format": HF_DIR,
        "architectures": list(config.get("architectures") or []),
        "model_type": config.get("model_type"),
        "num_layers": _config_value(config, "num_hidden_layers", "n_layer", "num_layers"),
        "hidden_size": hidden,
        "num_heads": _config_value(config, "num_attention_heads", "n_head", "num_heads"),
        "intermediate_size": _config_value(config, "intermediate_size", "n_inner", "hidden_dim"),
        "vocab_size": _config_value(config, "vocab_size"),
        "max_positions": _config_value(config, "max_position_embeddings", "n_positions"),
        # No graph yet: these are the conventional encoder inputs and output.
        "inputs": inputs,
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": out_shape}],
        "parameters": int(params),
        "ops": {},
        "tensors": n_tensors,
        "dtypes": sorted(dtypes),
        "tokenizer": tokenizer_info(root),
        # Class names a classifier's bundle carries by default (fleet publish).
        "labels": _labels_from_config(config),
    }


def _labels_from_config(config: dict[str, Any]) -> list[str]:
    """`id2label` in id order; [] when absent, not 0..n-1, or only LABEL_i placeholders."""
    raw = config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return []
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return []
    if sorted(by_id) != list(range(len(by_id))):
        return []
    labels = [by_id[i] for i in range(len(by_id))]
    return [] if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels
