"""inspect_model on tiny ONNX, TFLite and Hugging Face models (and the real MiniLM)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compression.pipeline.errors import InvalidModelError
from compression.pipeline.inspect import inspect_model, safetensors_header
from tests.compression.helpers import minilm_dir
from tests.fixtures.tiny_models import (
    bert_feed,
    bert_parameter_count,
    build_tiny_bert_onnx,
    build_tiny_hf_dir,
    tiny_tflite_reference,
)

COMMON_KEYS = {"format", "inputs", "outputs", "parameters", "ops"}


def check_common(info: dict[str, Any], fmt: str) -> None:
    assert set(info) >= COMMON_KEYS
    assert info["format"] == fmt
    assert isinstance(info["parameters"], int)
    assert json.loads(json.dumps(info)) == info  # JSON-serialisable as is


def onnx_parameters(path: Path) -> int:
    model = onnx.load(str(path))  # loads external data too: an independent count
    return sum(onnx.numpy_helper.to_array(t).size for t in model.graph.initializer)


def test_it_runs_the_tiny_bert_fixture_in_onnxruntime(tiny_onnx: Path) -> None:
    import onnxruntime as ort

    onnx.checker.check_model(str(tiny_onnx))
    (out,) = ort.InferenceSession(str(tiny_onnx)).run(None, bert_feed(batch=2, seq=5))
    assert out.shape == (2, 5, 32) and np.isfinite(out).all()


def test_it_inspects_tiny_bert_onnx(tiny_onnx: Path) -> None:
    info = inspect_model(tiny_onnx, "onnx")
    check_common(info, "onnx")
    assert info["ir_version"] == 8 and info["opset_imports"] == {"ai.onnx": 17}
    assert info["producer_name"] == "tinyfleet-tests" and info["graph_name"] == "tiny_bert"
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": ["batch", "sequence"],
    }
    assert info["outputs"] == [
        {"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 32]}
    ]
    assert info["parameters"] == onnx_parameters(tiny_onnx)
    ops = info["ops"]
    assert ops["Softmax"] == 2 and ops["Erf"] == 2 and ops["Gather"] == 2
    assert ops["LayerNormalization"] == 1 + 2 * 2
    assert ops["MatMul"] == 2 * (4 + 2 + 2)  # per layer: q,k,v,out, 2 attention, 2 FFN
    assert info["external_data"] == {"files": [], "bytes": 0}


def test_it_inspects_fixed_and_unknown_dimensions(tmp_path: Path) -> None:
    fixed = inspect_model(build_tiny_bert_onnx(tmp_path / "f.onnx", seq=16, layers=1), "onnx")
    assert fixed["inputs"][0]["shape"] == ["batch", 16]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "u.onnx"
    onnx.save(helper.make_model(graph), str(path))
    info = inspect_model(path, "onnx")
    assert info["inputs"][0]["shape"] == [None, 3]
    assert info["outputs"][0]["shape"] is None
    assert info["parameters"] == 0 and info["ops"] == {"Relu": 1}


def test_it_inspects_onnx_with_external_data(tiny_onnx_external: Path) -> None:
    info = inspect_model(tiny_onnx_external, "onnx")  # the extracted folder
    check_common(info, "onnx")
    data = tiny_onnx_external / "model.onnx.data"
    assert info["external_data"] == {
        "files": [{"location": "model.onnx.data", "bytes": data.stat().st_size}],
        "bytes": data.stat().st_size,
    }
    assert info["parameters"] == onnx_parameters(tiny_onnx_external / "model.onnx")


def test_it_rejects_malformed_onnx_on_inspection(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x08\x3a\x05abc")  # ir_version then a truncated graph
    with pytest.raises(InvalidModelError, match="truncated"):
        inspect_model(path, "onnx")


def test_it_inspects_tiny_tflite(tiny_tflite: Path) -> None:
    info = inspect_model(tiny_tflite, "tflite")
    check_common(info, "tflite")
    assert info["inputs"] == [
        {"name": "input", "dtype": "float32", "shape": [1, 4], "quantization": None}
    ]
    assert info["outputs"][0]["name"] == "output" and info["outputs"][0]["shape"] == [1, 3]
    assert info["ops"] == {"FULLY_CONNECTED": 1, "ADD": 1, "SOFTMAX": 1}
    assert info["op_versions"] == {"FULLY_CONNECTED": [1], "ADD": [1], "SOFTMAX": [1]}
    assert info["parameters"] == 12 + 3 + 3  # weights, bias, added constant
    assert info["subgraphs"] == 1 and info["schema_version"] == 3
    assert info["description"] == "tinyfleet tiny tflite"
    assert info["min_runtime_version"] == "1.14.0"


def test_it_runs_the_tiny_tflite_fixture_in_litert(tiny_tflite: Path) -> None:
    import ai_edge_litert.interpreter as interpreter_mod  # CI installs it: never skip

    interpreter = interpreter_mod.Interpreter(model_path=str(tiny_tflite))
    interpreter.allocate_tensors()
    x = np.array([[0.5, -1.0, 2.0, 0.25]], np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(y, tiny_tflite_reference(x), rtol=1e-5)


@pytest.mark.parametrize("seed", range(40))
def test_it_only_ever_raises_invalid_model_on_corrupted_tflite(
    tmp_path: Path, tiny_tflite: Path, seed: int
) -> None:
    # Forged offsets and vector lengths must give a clear error, never a crash or hang.
    rng = np.random.default_rng(seed)
    data = bytearray(tiny_tflite.read_bytes())
    for pos in rng.integers(8, len(data), 6):
        data[pos] = int(rng.integers(0, 256))
    path = tmp_path / "fuzz.tflite"
    path.write_bytes(bytes(data))
    try:
        info = inspect_model(path, "tflite")
    except InvalidModelError:
        return
    json.dumps(info)


def test_it_inspects_tiny_hf_dir(tiny_hf_dir: Path) -> None:
    info = inspect_model(tiny_hf_dir, "hf-dir")
    check_common(info, "hf-dir")
    assert info["architectures"] == ["BertModel"] and info["model_type"] == "bert"
    assert (info["num_layers"], info["hidden_size"], info["num_heads"]) == (2, 32, 2)
    assert info["intermediate_size"] == 128 and info["max_positions"] == 64
    assert info["parameters"] == bert_parameter_count()
    assert info["dtypes"] == ["F32"]
    assert info["tokenizer"]["present"] and info["tokenizer"]["type"] == "WordPiece"
    assert info["tokenizer"]["class"] == "BertTokenizer"
    assert [i["name"] for i in info["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["ops"] == {}


def test_it_inspects_sharded_hf_dir_from_a_parent_folder(tmp_path: Path) -> None:
    build_tiny_hf_dir(tmp_path / "outer" / "model", shards=3)
    info = inspect_model(tmp_path / "outer", "hf-dir")
    assert info["parameters"] == bert_parameter_count()


def write_safetensors(path: Path, header: Any, data: bytes = b"", raw: bytes | None = None) -> Path:
    blob = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (None, b"", "header is not JSON"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"x" * 8, "past the end"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"x" * 8, "does not match"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "invalid shape"),
        ({"w": [1, 2]}, b"", "not an object"),
        ([1, 2], b"", "not a JSON object"),
    ],
)
def test_it_rejects_corrupt_safetensors_headers(
    tmp_path: Path, header: Any, data: bytes, message: str
) -> None:
    raw = b"{not json" if header is None else None
    path = write_safetensors(tmp_path / "model.safetensors", header, data, raw)
    with pytest.raises(InvalidModelError, match=message):
        safetensors_header(path)


def test_it_rejects_a_safetensors_header_length_bomb(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(InvalidModelError, match="header length out of range"):
        safetensors_header(path)


def test_it_rejects_hf_dir_without_config_or_weights(tmp_path: Path, tiny_hf_dir: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidModelError, match=r"config\.json"):
        inspect_model(tmp_path / "a", "hf-dir")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("{}")
    (tmp_path / "b" / "x.txt").write_text("")
    with pytest.raises(InvalidModelError, match=r"no model\.safetensors"):
        inspect_model(tmp_path / "b", "hf-dir")


def test_it_rejects_unknown_formats(tiny_onnx: Path) -> None:
    with pytest.raises(InvalidModelError, match="Unknown model format"):
        inspect_model(tiny_onnx, "keras")


@pytest.mark.slow
def test_it_inspects_the_real_minilm_hf_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = inspect_model(minilm_dir(), "hf-dir")
    check_common(info, "hf-dir")
    assert info["architectures"] == ["BertModel"] and info["model_type"] == "bert"
    assert (info["num_layers"], info["hidden_size"], info["num_heads"]) == (6, 384, 12)
    assert info["intermediate_size"] == 1536 and info["vocab_size"] == 30522
    assert info["max_positions"] == 512
    assert 22_000_000 < info["parameters"] < 23_000_000  # all-MiniLM-L6-v2 has 22.7 M
    assert info["tokenizer"]["type"] == "WordPiece"
    assert info["tokenizer"]["class"] == "BertTokenizer"
    assert info["outputs"][0]["shape"] == ["batch", "sequence", 384]
