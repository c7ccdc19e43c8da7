"""The `tflite` recipe on a tiny Hugging Face BERT built in a fixture: real litert-torch
conversion, real ai-edge-quantizer, real ai-edge-litert interpreter, and the real device
agent's LiteRT runtime serving the result. Nothing is mocked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression.pipeline.assess import assess
from compression.pipeline.benchmark import benchmark_model
from compression.pipeline.export_onnx import ExportError
from compression.pipeline.textdata import encode
from compression.pipeline.tflite_export import VARIANTS, TfliteParams, export_tflite
from compression.pipeline.tflite_session import TfliteSession
from compression.recipes import RecipeError, check_params
from tests.fixtures.tiny_models import build_tiny_hf_dir

SEQ = 32
TEXTS = ["turn the lights on", "hello world", "the weather is nice today"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_hf_dir(tmp_path_factory.mktemp("hf") / "bert")


@pytest.fixture(scope="module")
def converted(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for variant in VARIANTS:
        folder = tmp_path_factory.mktemp(variant)
        result = export_tflite(str(hf_dir), str(folder), TfliteParams(variant, seq_len=SEQ))
        assert result.metrics["tflite"]["variant"] == variant
        out[variant] = Path(result.output_path)
    return out


@pytest.fixture(scope="module")
def assessed(
    hf_dir: Path, converted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """The dynamic-int8 child measured against its PyTorch parent, and its golden set."""
    golden = tmp_path_factory.mktemp("golden") / "golden.npz"
    child = converted["dynamic-int8"].parent
    return assess(str(hf_dir), str(child), "text-embedding", str(golden)), golden


def _torch_sentence_embeddings(hf_dir: Path, texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalised vectors from the PyTorch model on *unpadded* tokens."""
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModel.from_pretrained(str(hf_dir), local_files_only=True).eval()
    rows = []
    for text in texts:
        enc = encode(hf_dir / "tokenizer.json", [text], max_length=SEQ)
        with torch.no_grad():
            hidden = model(input_ids=torch.from_numpy(enc.input_ids)).last_hidden_state[0]
        vector = hidden.mean(dim=0).numpy()
        rows.append(vector / np.linalg.norm(vector))
    return np.stack(rows)


def test_it_converts_every_variant_to_a_fixed_int32_signature(
    converted: dict[str, Path],
) -> None:
    for path in converted.values():
        session = TfliteSession(path)
        inputs = {i.name: (i.shape, i.dtype) for i in session.get_inputs()}
        assert inputs == {
            "input_ids": ([1, SEQ], np.dtype(np.int32)),
            "attention_mask": ([1, SEQ], np.dtype(np.int32)),
        }
        assert session.get_outputs()[0].shape == [1, 32]  # pooled in the graph: [1, hidden]
    sizes = {v: p.stat().st_size for v, p in converted.items()}
    assert sizes["dynamic-int8"] < 0.75 * sizes["fp32"]
    assert sizes["weight-only-int8"] < 0.75 * sizes["fp32"]


def test_it_matches_pytorch_on_padded_inputs_in_every_variant(
    hf_dir: Path, converted: dict[str, Path]
) -> None:
    want = _torch_sentence_embeddings(hf_dir, TEXTS)
    for variant, path in converted.items():
        session = TfliteSession(path)
        enc = encode(hf_dir / "tokenizer.json", TEXTS, max_length=SEQ)
        # Three texts padded to the longest, fed to a [1, 32] model: the session pads
        # each row to 32 and runs them one by one; the in-graph mask must hide the padding.
        got = session.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        vectors = got[0]
        assert vectors.shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        cosine = (vectors * want).sum(axis=1)
        floor = 0.9999 if variant == "fp32" else 0.99
        assert cosine.min() > floor, (variant, cosine)


def test_it_records_every_op_with_versions_and_min_runtime(converted: dict[str, Path]) -> None:
    from compression.pipeline.tflite_export import record_ops

    ops = record_ops(converted["dynamic-int8"])
    assert set(ops["ops"]) == set(ops["op_versions"])
    assert {"FULLY_CONNECTED", "SOFTMAX", "BATCH_MATMUL"} <= set(ops["ops"])
    assert all(versions and min(versions) >= 1 for versions in ops["op_versions"].values())
    assert ops["min_runtime_version"] and ops["min_runtime_version"][0].isdigit()


def test_it_assesses_and_benchmarks_a_tflite_child_against_its_pytorch_parent(
    converted: dict[str, Path], assessed: tuple[dict[str, Any], Path]
) -> None:
    assert (converted["dynamic-int8"].parent / "tokenizer.json").is_file()
    report = assessed[0]
    assert report["inputs"] == "built-in sentences"
    assert report["fidelity"]["cosine_mean"] > 0.99
    assert report["golden"]["count"] == 32
    bench = benchmark_model(converted["dynamic-int8"], runs=5)
    assert list(bench["latency_batch1"]) == [str(SEQ)]  # the fixed length, nothing else
    assert bench["latency_batch1"][str(SEQ)]["p50_ms"] > 0
    assert bench["throughput_items_per_s"] > 0 and bench["peak_rss_bytes"] > 0


def test_the_agent_serves_the_bundle_on_litert_and_passes_its_golden_self_test(
    hf_dir: Path, converted: dict[str, Path], assessed: tuple[dict[str, Any], Path]
) -> None:
    from tinyfleet_agent._internal.record import PipelineSpec
    from tinyfleet_agent._internal.selftest import run_golden_selftest
    from tinyfleet_agent.predictor import Predictor

    bundle = converted["dynamic-int8"].parent
    spec = PipelineSpec(
        task="text-embedding",
        tokenizer="tokenizer.json",
        max_seq_len=SEQ,
        pooling="none",
        normalize=True,
        labels=(),
        confidence_threshold=None,
    )
    predictor = Predictor(bundle, spec, runtime="litert")
    assert predictor.runtime.name == "litert"
    batch = predictor.predict(TEXTS)  # a batch of 3 through the batch-1 graph
    singles = [predictor.predict([text])[0] for text in TEXTS]
    for together, alone in zip(batch, singles, strict=True):
        np.testing.assert_allclose(together["embedding"], alone["embedding"], atol=1e-5)
    want = _torch_sentence_embeddings(hf_dir, TEXTS)
    got = np.array([row["embedding"] for row in batch])
    assert (got * want).sum(axis=1).min() > 0.99
    result = run_golden_selftest(predictor.runtime, assessed[1])
    assert result.passed, result.to_dict()


def test_it_rejects_bad_parameters_before_anything_runs() -> None:
    with pytest.raises(RecipeError, match="variant must be one of"):
        check_params("tflite", {"variant": "int4"})
    with pytest.raises(RecipeError, match="seq_len must be an integer from 8 to 512"):
        check_params("tflite", {"seq_len": 4096})
    with pytest.raises(RecipeError, match="unknown parameter"):
        check_params("tflite", {"opset": 17})
    assert check_params("tflite", {})["variant"] == "dynamic-int8"


def test_it_refuses_a_sequence_longer_than_the_position_table(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="exceeds the model's 64 positions"):
        export_tflite(str(hf_dir), str(tmp_path / "out"), TfliteParams(seq_len=128))
    assert not (tmp_path / "out").exists()


def test_it_refuses_a_folder_without_safetensors(hf_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(ExportError, match=r"no \.safetensors weights"):
        export_tflite(str(folder), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_it_exports_a_classifier_with_logits_in_the_graph(hf_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "classifier"
    folder.mkdir()
    for item in hf_dir.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((hf_dir / "config.json").read_text())
    config |= {"architectures": ["BertForSequenceClassification"], "num_labels": 3}
    (folder / "config.json").write_text(json.dumps(config))
    result = export_tflite(str(folder), str(tmp_path / "out"), TfliteParams("fp32", seq_len=16))
    assert result.pipeline["output"] == "logits" and result.pipeline["task"] == "classifier"
    assert result.metrics["tflite"]["check_max_abs_error"] < 1e-3
    session = TfliteSession(result.output_path)
    ids = np.array([[2, 5, 6, 3]], dtype=np.int64)
    [logits] = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert logits.shape == (1, 3) and np.all(np.isfinite(logits))


def test_a_worker_without_the_converters_says_which_extra_to_install(
    hf_dir: Path, tmp_path: Path
) -> None:
    from compression.pipeline.runner import ConverterCrashError, run_in_subprocess

    # A converter subprocess where litert_torch cannot be found, as on a server installed
    # without the `tflite` extra: a sitecustomize whose import finder hides that package.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'litert_torch':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    with pytest.raises(ConverterCrashError, match=r"needs litert_torch on the worker"):
        run_in_subprocess(
            "tflite",
            {"model_dir": str(hf_dir), "output_dir": str(tmp_path / "out"), "params": {}},
            env={"PYTHONPATH": str(hide)},
            timeout=300,
        )
    assert not (tmp_path / "out").exists()
