"""Runtimes (onnxruntime, LiteRT) and the Predictor on tiny real models."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from tinyfleet_agent._internal.runtime import (
    RuntimeLoadError,
    UnsupportedRuntimeError,
    available_runtimes,
    check_runtime,
    load_runtime,
    version_tuple,
)
from tinyfleet_agent.predictor import InputError, Predictor

from . import agent_fixtures as F

AGENT = Path(__file__).resolve().parents[2] / "agent"


def model_dir(tmp_path: Path, task: str, **kw: Any) -> Path:
    F.write_tokenizer(tmp_path / "tokenizer.json")
    if task == "tensor":
        F.build_tensor_onnx(tmp_path / "model.onnx")
    else:
        F.build_encoder_onnx(tmp_path / "model.onnx", task, **kw)
    return tmp_path


def spy_feeds(predictor: Predictor) -> list[dict[str, np.ndarray]]:
    """Record every feed dict the predictor hands to its runtime."""
    seen: list[dict[str, np.ndarray]] = []
    run = predictor.runtime.run

    def recording(feeds: Any) -> list[np.ndarray]:
        seen.append({k: np.array(v) for k, v in feeds.items()})
        return run(feeds)

    predictor.runtime.run = recording  # type: ignore[method-assign]
    return seen


def test_it_lists_runtimes_without_importing_them() -> None:
    probe = (
        "import sys\nfrom tinyfleet_agent._internal.runtime import available_runtimes\n"
        "found = available_runtimes()\n"
        "print(sorted(found), 'onnxruntime' in sys.modules, 'ai_edge_litert' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(AGENT)},
    ).stdout.strip()
    assert out == "['litert', 'onnxruntime'] False False"
    assert available_runtimes()["onnxruntime"] == ort.__version__


def test_it_refuses_a_runtime_older_than_the_bundle_needs(tmp_path: Path) -> None:
    record = F.fake_record(min_runtime_version="99.0")
    with pytest.raises(UnsupportedRuntimeError, match=r"older than 99\.0"):
        Predictor(model_dir(tmp_path, "text-classification"), record)
    with pytest.raises(UnsupportedRuntimeError, match="not installed"):
        check_runtime("tflite-runtime")
    assert version_tuple("2.3.0rc1") == (2, 3, 0)


def test_it_embeds_text_as_mean_pooled_unit_vectors(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "text-embedding")
    predictor = Predictor(directory, F.spec("text-embedding"))
    [result] = predictor.predict(["turn the lights on"])
    session = ort.InferenceSession(str(directory / "model.onnx"))
    feeds = F.tokenize(directory / "tokenizer.json", "turn the lights on")
    hidden = session.run(None, feeds)[0][0]
    expected = hidden.mean(axis=0) / np.linalg.norm(hidden.mean(axis=0))
    np.testing.assert_allclose(result["embedding"], expected, rtol=1e-5, atol=1e-6)
    assert predictor.load_seconds > 0


def test_it_never_pads_a_single_input(tmp_path: Path) -> None:
    # tokenizer.json pads to 32 by default; batch 1 must see its own 6 tokens.
    predictor = Predictor(model_dir(tmp_path, "text-embedding"), F.spec("text-embedding"))
    seen = spy_feeds(predictor)
    predictor.predict(["turn the lights on"])
    assert seen[0]["input_ids"].shape == (1, 6)
    assert seen[0]["attention_mask"].all()


def test_it_pads_a_batch_to_its_longest_input_and_answers_as_singly(tmp_path: Path) -> None:
    predictor = Predictor(model_dir(tmp_path, "text-embedding"), F.spec("text-embedding"))
    seen = spy_feeds(predictor)
    batch = predictor.predict(F.TEXTS)
    assert seen[0]["input_ids"].shape == (3, 9)
    for text, result in zip(F.TEXTS, batch, strict=True):
        [single] = predictor.predict([text])
        np.testing.assert_allclose(result["embedding"], single["embedding"], atol=1e-5)


def test_it_truncates_to_the_pipeline_max_seq_len(tmp_path: Path) -> None:
    predictor = Predictor(
        model_dir(tmp_path, "text-embedding"), F.spec("text-embedding", max_seq_len=4)
    )
    seen = spy_feeds(predictor)
    predictor.predict(["what is the weather today in paris"])
    assert seen[0]["input_ids"].shape == (1, 4)


def test_it_classifies_with_labels_and_flags_low_confidence(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "text-classification")
    plain = Predictor(directory, F.spec("text-classification"))
    [result] = plain.predict(["play some music"])
    assert result["label"] in F.LABELS and result["low_confidence"] is False
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["confidence"] == max(result["scores"].values())
    strict = Predictor(directory, F.spec("text-classification", confidence_threshold=0.99))
    detailed = strict.predict_detailed(["play some music", "hello world"])
    assert [o["low_confidence"] for o in detailed.outputs] == [True, True]
    assert detailed.low_confidence == 2
    assert detailed.confidences[0] == pytest.approx(result["confidence"])
    assert detailed.input_lengths == [5, 4]


def test_it_tags_tokens_and_skips_special_tokens(tmp_path: Path) -> None:
    predictor = Predictor(
        model_dir(tmp_path, "token-classification"), F.spec("token-classification")
    )
    [result] = predictor.predict(["open door"])
    assert [t["token"] for t in result["tokens"]] == ["open", "door"]
    assert [(t["start"], t["end"]) for t in result["tokens"]] == [(0, 4), (5, 9)]
    assert all(t["label"] in F.TAGS for t in result["tokens"])


def test_it_runs_raw_tensor_models(tmp_path: Path) -> None:
    predictor = Predictor(model_dir(tmp_path, "tensor"), F.spec("tensor"))
    [result] = predictor.predict([{"x": [1.0, 0.0, 0.0, 0.0]}])
    np.testing.assert_allclose(result["y"], [[1.0, 1.1, 1.2]], rtol=1e-6)
    [batched] = predictor.predict([{"x": [[0.0, 0.0, 0.0, 1.0]]}])
    np.testing.assert_allclose(batched["y"], [[1.9, 2.0, 2.1]], rtol=1e-6)


@pytest.mark.parametrize(
    ("task", "inputs", "message"),
    [
        ("text-classification", [], "non-empty list"),
        ("text-classification", "hello", "non-empty list"),
        ("text-classification", [42], "takes strings"),
        ("text-classification", ["x" * 100_001], "longer than"),
        ("tensor", ["hello"], "takes objects"),
        ("tensor", [{"z": [1, 2, 3, 4]}], "exactly"),
        ("tensor", [{"x": ["a", "b", "c", "d"]}], "not a numeric array"),
        ("tensor", [{"x": [1.0, 2.0]}], "rejected the input"),
    ],
)
def test_it_rejects_malformed_inputs(tmp_path: Path, task: str, inputs: Any, message: str) -> None:
    predictor = Predictor(model_dir(tmp_path, task), F.spec(task))
    with pytest.raises(InputError, match=message):
        predictor.predict(inputs)


def test_it_loads_from_a_signed_record(tmp_path: Path) -> None:
    predictor = Predictor(model_dir(tmp_path, "text-classification"), F.fake_record(), threads=2)
    assert predictor.bundle_id == "intent-r1" and predictor.runtime.name == "onnxruntime"
    assert [i.name for i in predictor.runtime.inputs] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]


def test_it_micro_batches_concurrent_requests(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, "text-classification")
    reference = Predictor(directory, F.spec("text-classification"))
    batching = Predictor(directory, F.spec("text-classification"), batch_window_ms=50)
    seen = spy_feeds(batching)
    texts = [F.TEXTS[i % 3] for i in range(8)]
    results: dict[int, Any] = {}
    barrier = threading.Barrier(len(texts))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batching.predict([texts[i]])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batching.close()
    assert len(seen) < len(texts)  # grouped into fewer model calls
    for i, text in enumerate(texts):
        [single] = reference.predict([text])
        assert results[i]["label"] == single["label"]
        assert results[i]["confidence"] == pytest.approx(single["confidence"], abs=1e-5)


def test_it_runs_a_fixed_shape_tflite_model_on_litert(tmp_path: Path) -> None:
    F.write_tokenizer(tmp_path / "tokenizer.json")
    F.build_gather_tflite(tmp_path / "model.tflite")
    predictor = Predictor(tmp_path, F.spec("text-embedding"), runtime="litert")
    assert predictor.runtime.name == "litert"
    assert predictor.runtime.inputs[0].name == "input_ids"
    assert predictor.runtime.inputs[0].shape == (1, F.TFLITE_SEQ)
    table = F.tflite_table()
    short, long_text = "turn the lights on", " ".join(["hello world"] * 12)
    results = predictor.predict([short])
    ids = F.tokenize(tmp_path / "tokenizer.json", short)["input_ids"][0]
    expected = table[ids].mean(axis=0)
    np.testing.assert_allclose(
        results[0]["embedding"], expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6
    )
    # Longer than the static shape: the runtime truncates, pooling follows.
    [truncated] = predictor.predict([long_text])
    ids = F.tokenize(tmp_path / "tokenizer.json", long_text)["input_ids"][0][: F.TFLITE_SEQ]
    expected = table[ids].mean(axis=0)
    np.testing.assert_allclose(
        truncated["embedding"], expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6
    )


def test_it_refuses_onnx_external_data_outside_the_model_folder(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "64")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "escape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    (tmp_path / "slot").mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    (tmp_path / "slot" / "model.onnx").write_bytes(model.SerializeToString())
    assert onnx is not None
    with pytest.raises(RuntimeLoadError, match="escapes model directory"):
        load_runtime("onnxruntime", tmp_path / "slot" / "model.onnx")
