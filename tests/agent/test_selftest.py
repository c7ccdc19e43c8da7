"""The golden-set self-test passes the right model and fails, never crashes, otherwise."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinyfleet_agent._internal.runtime import load_runtime
from tinyfleet_agent._internal.selftest import run_golden_selftest
from tinyfleet_agent.predictor import Predictor

from . import agent_fixtures as F


class FakeRuntime:
    """Answers golden feeds with whatever `answer(i, feeds)` returns."""

    def __init__(self, answer: Callable[[int, Mapping[str, np.ndarray]], np.ndarray]) -> None:
        self.calls = 0
        self.answer = answer

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        return [self.answer(self.calls - 1, feeds)]


def golden(tmp_path: Path, task: str) -> tuple[Path, Path]:
    work = tmp_path / task
    work.mkdir()
    tokenizer = F.write_tokenizer(work / "tokenizer.json")
    parent = F.build_encoder_onnx(work / "parent.onnx", task)
    path = work / "golden.npz"
    F.write_golden(path, parent, tokenizer, task, F.TEXTS)
    return path, work


def references(path: Path) -> list[np.ndarray]:
    with np.load(path) as g:
        return [g[f"{i}/reference"] for i in range(len(F.TEXTS))]


@pytest.mark.parametrize("task", ["text-embedding", "text-classification", "token-classification"])
def test_it_passes_the_model_the_golden_set_came_from(tmp_path: Path, task: str) -> None:
    path, work = golden(tmp_path, task)
    F.build_encoder_onnx(work / "model.onnx", task)
    result = run_golden_selftest(Predictor(work, F.spec(task)), path)
    assert result.passed and result.reason == "ok"
    assert result.agreement == 1.0 and result.count == 3
    assert result.metric == ("cosine" if task == "text-embedding" else "max_abs_error")


@pytest.mark.parametrize("task", ["text-embedding", "text-classification"])
def test_it_fails_a_model_whose_weights_were_perturbed(tmp_path: Path, task: str) -> None:
    path, work = golden(tmp_path, task)
    F.build_encoder_onnx(work / "model.onnx", task, perturb=0.5)
    runtime = load_runtime("onnxruntime", work / "model.onnx")
    result = run_golden_selftest(runtime, path)
    assert not result.passed and result.reason.startswith("below-tolerance")
    assert result.agreement < 1.0
    assert result.worst < 0.99 if task == "text-embedding" else result.worst > 1e-3


def test_it_fails_on_a_shape_mismatch(tmp_path: Path) -> None:
    path, work = golden(tmp_path, "text-classification")
    F.build_encoder_onnx(work / "model.onnx", "token-classification")
    result = run_golden_selftest(load_runtime("onnxruntime", work / "model.onnx"), path)
    assert not result.passed and result.reason.startswith("shape-mismatch")


def test_it_fails_on_nan_outputs(tmp_path: Path) -> None:
    path, _ = golden(tmp_path, "text-embedding")
    refs = references(path)

    def answer(i: int, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        out = refs[i].copy()
        if i == 1:
            out[0, 0, 0] = np.nan
        return out

    result = run_golden_selftest(FakeRuntime(answer), path)
    assert not result.passed and result.reason.startswith("non-finite: example 1")


def test_it_fails_when_the_runtime_raises(tmp_path: Path) -> None:
    path, _ = golden(tmp_path, "text-classification")

    def answer(i: int, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        raise RuntimeError("kernel missing")

    result = run_golden_selftest(FakeRuntime(answer), path)
    assert not result.passed and "kernel missing" in result.reason


def test_it_reports_partial_agreement_against_a_threshold(tmp_path: Path) -> None:
    path, _ = golden(tmp_path, "text-classification")
    refs = references(path)

    def runtime() -> FakeRuntime:
        return FakeRuntime(lambda i, feeds: refs[i] + (0.5 if i == 2 else 0.0))

    strict = run_golden_selftest(runtime(), path)
    assert not strict.passed and strict.agreement == pytest.approx(2 / 3)
    assert strict.worst == pytest.approx(0.5)
    lenient = run_golden_selftest(runtime(), path, min_agreement=0.6)
    assert lenient.passed and lenient.to_dict()["agreement"] == pytest.approx(2 / 3)


def test_it_compares_in_graph_pooled_embeddings(tmp_path: Path) -> None:
    # TFLite exports pool and normalise inside the graph: [1, dim] outputs.
    path, _ = golden(tmp_path, "text-embedding")
    refs = references(path)
    result = run_golden_selftest(FakeRuntime(lambda i, feeds: refs[i].mean(axis=1)), path)
    assert result.passed and result.worst == pytest.approx(1.0, abs=1e-5)


def _savez(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _meta(**overrides: Any) -> np.ndarray:
    meta = {"task": "tensor", "count": 1, "tolerance": {"max_abs_error": 0.1}, "format": 1}
    meta.update(overrides)
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"0/input/x": np.ones((1, 4)), "0/reference": np.ones((1, 3))}, "no meta"),
        ({"meta": _meta(format=2)}, "unsupported golden format"),
        ({"meta": _meta(count=0)}, "count"),
        ({"meta": _meta(tolerance={"min_agreement": 0.5})}, "tolerance"),
        ({"meta": np.array([1.0, 2.0])}, "uint8"),
        ({"meta": _meta(), "0/reference": np.ones((1, 3))}, "incomplete"),
        ({"meta": _meta(), "0/input/x": np.array([object()], dtype=object)}, "golden-unusable"),
    ],
)
def test_it_fails_on_a_malformed_golden_file(
    tmp_path: Path, arrays: dict[str, Any], reason: str
) -> None:
    path = _savez(tmp_path / "g.npz", **arrays)
    runtime = FakeRuntime(lambda i, feeds: np.ones((1, 3)))
    result = run_golden_selftest(runtime, path)
    assert (
        not result.passed
        and result.reason.startswith("golden-unusable")
        and reason in result.reason
    )
    assert math.isnan(result.worst) and result.to_dict()["worst"] is None


def test_it_fails_on_a_file_that_is_not_a_golden_set(tmp_path: Path) -> None:
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 not really")
    result = run_golden_selftest(FakeRuntime(lambda i, f: np.ones(1)), tmp_path / "g.npz")
    assert not result.passed and result.reason.startswith("golden-unusable")
    missing = run_golden_selftest(FakeRuntime(lambda i, f: np.ones(1)), tmp_path / "nope.npz")
    assert not missing.passed


def test_it_gates_activation_on_the_golden_test(tmp_path: Path) -> None:
    """The updater's recipe: install to the inactive slot, load, self-test, then switch."""
    from tinyfleet_agent._internal.payload import extract_payload
    from tinyfleet_agent._internal.slots import SlotStore

    state = tmp_path / "state"
    F.install(state, tmp_path / "w1", release=1)
    store = SlotStore(state)
    for perturb, expected in ((0.5, "intent-r1"), (0.0, "intent-r2")):
        payload, golden_sha = F.build_payload(tmp_path / f"w2-{perturb}", perturb=perturb)
        directory = store.prepare_inactive()
        extracted = extract_payload(payload, directory, golden_sha256=golden_sha)
        meta = F.slot_meta("text-classification", "intent-r2", 2)
        candidate = Predictor(directory, meta.pipeline_spec(), runtime=meta.runtime)
        if run_golden_selftest(candidate, extracted.golden).passed:
            store.activate(meta)
        candidate.close()
        assert store.active().meta.bundle == expected  # type: ignore[union-attr]
