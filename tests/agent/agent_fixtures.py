"""Tiny real models, tokenizers, golden sets and payloads for the agent tests.

Built here with onnx.helper, `tokenizers` and LiteRT's flatbuffer schema, so
the agent tests need neither the server code nor the real MiniLM weights.
The ONNX encoder is mask-aware (a masked mean feeds back into every token),
like a Transformer: padding changes nothing only if the mask is honoured.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tinyfleet_agent._internal.payload import extract_payload
from tinyfleet_agent._internal.record import BundleRecord, PipelineSpec
from tinyfleet_agent._internal.slots import Slot, SlotMeta, SlotStore
from tinyfleet_agent._internal.stream_aead import CipherParams, ciphertext_length_for
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (
    "turn the lights on off play some music stop what is weather today in paris "
    "hello world set a timer for five minutes call mom open door lock close ##s ##ing"
)
WORDS = _WORDS.split()
VOCAB = SPECIALS + WORDS
HIDDEN = 16
LABELS = ("lights", "music", "other")
TAGS = ("O", "B-ACTION", "B-THING")
TEXTS = ["turn the lights on", "play some music", "what is the weather today in paris"]
TFLITE_SEQ = 16


def write_tokenizer(path: Path, pad_to: int = 32) -> Path:
    """A WordPiece tokenizer.json that, like many on the hub, pads by default."""
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.enable_padding(length=pad_to, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=512)
    tok.save(str(path))
    return path


def spec(task: str, **overrides: Any) -> PipelineSpec:
    values: dict[str, Any] = {
        "task": task,
        "tokenizer": "tokenizer.json" if task != "tensor" else None,
        "max_seq_len": 64,
        "pooling": "mean" if task == "text-embedding" else "none",
        "normalize": task == "text-embedding",
        "labels": {"text-classification": LABELS, "token-classification": TAGS}.get(task, ()),
        "confidence_threshold": None,
    }
    values.update(overrides)
    return PipelineSpec(**values)


def _weights(seed: int, perturb: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {
        "E": (len(VOCAB), HIDDEN),
        "T": (2, HIDDEN),
        "W1": (HIDDEN, HIDDEN),
        "W2": (HIDDEN, HIDDEN),
        "Wc": (HIDDEN, len(LABELS)),
        "Wt": (HIDDEN, len(TAGS)),
    }
    weights = {k: rng.standard_normal(s).astype(np.float32) * 0.5 for k, s in shapes.items()}
    if perturb:
        noise = np.random.default_rng(seed + 1000)
        for k, w in weights.items():
            weights[k] = w + noise.standard_normal(w.shape).astype(np.float32) * perturb
    return weights


def _encoder_nodes() -> list[onnx.NodeProto]:
    n = helper.make_node
    return [
        n("Gather", ["E", "input_ids"], ["emb"]),
        n("Gather", ["T", "token_type_ids"], ["temb"]),
        n("Add", ["emb", "temb"], ["h0"]),
        n("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        n("Mul", ["h0", "mask3"], ["masked"]),
        n("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=1),
        n("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=1),
        n("Max", ["count", "eps"], ["count_safe"]),
        n("Div", ["summed", "count_safe"], ["ctx"]),
        n("MatMul", ["h0", "W1"], ["a"]),
        n("MatMul", ["ctx", "W2"], ["b"]),
        n("Add", ["a", "b"], ["pre"]),
        n("Tanh", ["pre"], ["last_hidden_state"]),
    ]


def build_encoder_onnx(
    path: Path, task: str = "text-embedding", *, seed: int = 0, perturb: float = 0.0
) -> Path:
    """A tiny mask-aware encoder; the head depends on `task`."""
    w = _weights(seed, perturb)
    n = helper.make_node
    nodes = _encoder_nodes()
    dims = ["batch", "seq"]
    if task == "text-embedding":
        out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, HIDDEN])
    elif task == "text-classification":
        nodes += [
            n("Mul", ["last_hidden_state", "mask3"], ["hm"]),
            n("ReduceSum", ["hm", "axis1"], ["hs"], keepdims=0),
            n("ReduceSum", ["mask3", "axis1"], ["hc"], keepdims=0),
            n("Div", ["hs", "hc"], ["pooled"]),
            n("MatMul", ["pooled", "Wc"], ["logits"]),
        ]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])
    else:
        nodes.append(n("MatMul", ["last_hidden_state", "Wt"], ["logits"]))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [*dims, len(TAGS)])
    used = {name for node in nodes for name in node.input}
    inits = [numpy_helper.from_array(v, k) for k, v in w.items() if k in used] + [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array(1e-9, np.float32), "eps"),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, dims)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(nodes, "tiny-encoder", inputs, [out], inits)
    return _save(graph, path)


def build_tensor_onnx(path: Path) -> Path:
    """y = x @ W + 1 on float inputs x [batch, 4]."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    one = numpy_helper.from_array(np.ones(3, np.float32), "one")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "one"], ["y"]),
        ],
        "tiny-tensor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w, one],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    # IR 9 / opset 17: loadable by every onnxruntime the agent supports.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_gather_tflite(path: Path, *, seed: int = 0, seq: int = TFLITE_SEQ) -> Path:
    """A fixed-shape [1, seq] int32 -> [1, seq, HIDDEN] embedding lookup (GATHER)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    table = tflite_table(seed)

    def buffer(data: np.ndarray | None = None) -> Any:
        b = s.BufferT()
        if data is not None:
            b.data = np.frombuffer(data.tobytes(), np.uint8)
        return b

    def tensor(name: str, shape: list[int], kind: int, buf: int) -> Any:
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, kind, buf
        return t

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.GATHER
    code.version = 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [1, 0], [2]
    op.builtinOptionsType = s.BuiltinOptions.GatherOptions
    op.builtinOptions = s.GatherOptionsT()
    graph = s.SubGraphT()
    graph.tensors = [
        tensor("serving_default_input_ids:0", [1, seq], s.TensorType.INT32, 1),
        tensor("table", list(table.shape), s.TensorType.FLOAT32, 2),
        tensor("last_hidden_state", [1, seq, HIDDEN], s.TensorType.FLOAT32, 3),
    ]
    graph.inputs, graph.outputs, graph.operators = [0], [2], [op]
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [buffer(), buffer(), buffer(table), buffer()]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def tflite_table(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(VOCAB), HIDDEN)).astype(np.float32)


def tokenize(tokenizer: Path, text: str) -> dict[str, np.ndarray]:
    """Unpadded batch-1 feeds, the way the server writes golden inputs."""
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    enc = tok.encode(text)
    return {
        "input_ids": np.array([enc.ids], np.int64),
        "attention_mask": np.array([enc.attention_mask], np.int64),
        "token_type_ids": np.array([enc.type_ids], np.int64),
    }


def write_golden(path: Path, parent: Path, tokenizer: Path, task: str, texts: list[str]) -> str:
    """Golden set from the parent ONNX model; returns its sha256."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(parent), providers=["CPUExecutionProvider"])
    arrays: dict[str, np.ndarray] = {}
    for i, text in enumerate(texts):
        feeds = tokenize(tokenizer, text)
        for name, value in feeds.items():
            arrays[f"{i}/input/{name}"] = value
        arrays[f"{i}/reference"] = session.run(None, feeds)[0]
    tolerance = {"min_cosine": 0.99} if task == "text-embedding" else {"max_abs_error": 1e-3}
    meta = {"task": task, "count": len(texts), "tolerance": tolerance, "format": 1}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_payload(
    work: Path, task: str = "text-classification", *, seed: int = 0, perturb: float = 0.0
) -> tuple[Path, str]:
    """A payload ZIP (model.onnx, tokenizer.json, golden.npz): (path, golden sha256).

    The golden set always comes from the unperturbed parent (seed, perturb=0).
    """
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(work / "tokenizer.json")
    parent = build_encoder_onnx(work / "parent.onnx", task, seed=seed)
    model = build_encoder_onnx(work / "model.onnx", task, seed=seed, perturb=perturb)
    golden_sha = write_golden(work / "golden.npz", parent, tokenizer, task, TEXTS)
    payload = work / "payload.zip"
    with zipfile.ZipFile(payload, "w", compression=zipfile.ZIP_STORED) as z:
        for member in (model, tokenizer, work / "golden.npz"):
            z.write(member, member.name)
    return payload, golden_sha


def slot_meta(task: str, bundle: str = "intent-r1", release: int = 1) -> SlotMeta:
    return SlotMeta(
        bundle=bundle,
        release=release,
        runtime="onnxruntime",
        pipeline=spec(task).to_dict(),
        model="intent",
        version=f"1.{release}",
    )


def install(
    state_dir: Path, work: Path, task: str = "text-classification", *, release: int = 1, **kw: Any
) -> Slot:
    """The updater's local steps: prepare, extract, activate."""
    payload, golden = build_payload(work, task, **kw)
    store = SlotStore(state_dir)
    directory = store.prepare_inactive()
    extract_payload(payload, directory, golden_sha256=golden)
    return store.activate(slot_meta(task, f"intent-r{release}", release))


def install_steps(
    state_dir: Path, payload: Path, golden: str, hook: Callable[[str], None], release: int = 2
) -> None:
    """Install `release` (2 by default) from a built payload, calling `hook` between steps."""
    store = SlotStore(state_dir, hook=hook)
    directory = store.prepare_inactive()
    extract_payload(payload, directory, golden_sha256=golden, hook=hook)
    store.activate(slot_meta("text-classification", f"intent-r{release}", release))


def fake_record(task: str = "text-classification", **overrides: Any) -> BundleRecord:
    """A valid record (its cipher fields are placeholders: nothing is decrypted here)."""
    digest = hashlib.sha256(b"payload").hexdigest()
    cipher = CipherParams(
        "aes-256-gcm", 1 << 20, "00" * 7, digest, 100, ciphertext_length_for(100, 1 << 20), digest
    )
    values: dict[str, Any] = {
        "bundle_id": "intent-r1",
        "model": "intent",
        "version": "1.0",
        "release": 1,
        "runtime": "onnxruntime",
        "min_runtime_version": "1.17",
        "arch": ("x86_64", "aarch64"),
        "pipeline": spec(task),
        "cipher": cipher,
        "golden_set_sha256": digest,
    }
    values.update(overrides)
    return BundleRecord(**values)
