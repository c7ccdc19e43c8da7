"""Structured pruning in-process on a tiny teacher: importance, surgery that leaves smaller
dense weights, a model that still loads and runs, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.distill.params import DistillError
from compression.pipeline.prune.params import PruneFfnParams, PruneHeadsParams
from compression.pipeline.prune.recipe import prune_ffn_recipe, prune_heads_recipe
from compression.pipeline.prune.surgery import plan_heads
from tests.compression.distill_helpers import build_decoder, build_teacher, texts, write_jsonl

QUICK = {"recovery_texts": 160, "batch_size": 16, "eval_every": 5, "held_out": 16, "threads": 1}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_teacher(tmp_path_factory.mktemp("teacher") / "t")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", texts(300))


def _quiet(fraction: float, stage: str, message: str) -> None:
    pass


def test_it_plans_to_remove_the_least_important_heads_keeping_one_per_layer() -> None:
    importance = [[0.5, 0.01, 0.02, 0.9], [0.001, 0.002, 0.003, 0.004]]
    # Half of 8 heads: the four least important, but layer 1 keeps one of its own.
    assert plan_heads(importance, 0.5) == {0: [1], 1: [0, 1, 2]}
    assert plan_heads(importance, 0.9) == {0: [0, 1, 2], 1: [0, 1, 2]}


def test_it_prunes_heads_into_a_smaller_onnx_model_that_runs(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    params = PruneHeadsParams(fraction=0.5, **QUICK)  # type: ignore[arg-type]
    result = prune_heads_recipe(
        str(teacher), str(tmp_path / "out"), params, _quiet, str(train_file)
    )
    metrics = result.metrics
    assert metrics["heads_removed"] == 8 and metrics["heads_total"] == 16
    assert all(len(heads) < 4 for heads in metrics["plan"].values())
    assert metrics["parameters_after"] < metrics["parameters_before"]
    assert metrics["recovery"]["steps"] > 0
    session = ort.InferenceSession(result.output_path)
    feed = {
        "input_ids": np.array([[2, 5, 9, 3]]),
        "attention_mask": np.ones((1, 4), np.int64),
        "token_type_ids": np.zeros((1, 4), np.int64),
    }
    assert session.run(None, feed)[0].shape == (1, 4, 32)
    assert (Path(result.output_path).parent / "tokenizer.json").is_file()
    assert result.pipeline["pooling"] == "mean"


def test_it_prunes_ffn_neurons_into_a_standard_smaller_folder(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    import transformers

    params = PruneFfnParams(fraction=0.25, **QUICK)  # type: ignore[arg-type]
    result = prune_ffn_recipe(str(teacher), str(tmp_path / "out"), params, _quiet, str(train_file))
    config = json.loads((Path(result.output_path) / "config.json").read_text())
    assert config["intermediate_size"] == 96  # 128 * (1 - 0.25), every layer alike
    reloaded = transformers.AutoModel.from_pretrained(result.output_path)  # a standard folder
    assert sum(p.numel() for p in reloaded.parameters()) == result.metrics["parameters_after"]
    assert result.metrics["parameters_after"] < result.metrics["parameters_before"]


def test_it_refuses_to_prune_what_it_cannot(teacher: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fraction"):
        PruneHeadsParams(fraction=1.0)
    with pytest.raises(DistillError, match="BERT-style encoder"):
        prune_heads_recipe(str(build_decoder(tmp_path / "gpt")), str(tmp_path / "o"))
    tiny = write_jsonl(tmp_path / "tiny.jsonl", texts(20))
    with pytest.raises(DistillError, match="needs at least"):
        prune_ffn_recipe(str(teacher), str(tmp_path / "o2"), PruneFfnParams(), _quiet, str(tiny))
