"""Recipe onnx-int8-qat in-process on a tiny encoder: the simulated int8 is the int8
onnxruntime computes, fine-tuning brings the simulated model closer to the original,
the int8 result is measured against the original (not the fine-tuned copy), refusals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression.pipeline.auto_int8 import DEFAULT_CANDIDATES, activation_absmax
from compression.pipeline.auto_int8.graph import build_candidate
from compression.pipeline.qat.params import QatError, QatParams
from compression.pipeline.qat.recipe import quantize_int8_qat
from tests.compression.distill_helpers import (
    build_classifier_teacher,
    build_teacher,
    texts,
    write_jsonl,
)

CHOSEN = "smoothquant-0.7-outliers-down16-rows"


def _quiet(fraction: float, stage: str, message: str) -> None:
    pass


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_teacher(tmp_path_factory.mktemp("qat") / "t", layers=2, hidden=64)


def _cos_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean 1 - cosine of two row-normalised arrays."""
    return float((1 - (a * b).sum(1)).mean())


def _onnx_embeddings(path: Path, tokenizer: Path, sample: list[str]) -> np.ndarray:
    import onnxruntime as ort

    from compression.pipeline.evaluate import l2_normalize, mean_pool
    from compression.pipeline.textdata import encode

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    enc = encode(tokenizer, sample)
    rows = [
        mean_pool(session.run(None, enc.row(i).all_feeds())[0], enc.row(i).attention_mask)[0]
        for i in range(len(sample))
    ]
    return l2_normalize(np.stack(rows))


@pytest.mark.parametrize(
    ("name", "tuned"),
    [
        (CHOSEN, False),
        (CHOSEN, True),
        ("smoothquant-0.7-outliers-down16", False),
        ("dynamic-per-channel", False),
        ("keep-down-fp32", False),
    ],
)
def test_the_simulation_reproduces_onnxruntime_int8(
    teacher: Path, tmp_path: Path, name: str, tuned: bool
) -> None:
    """The fine-tuning simulates the int8 model it will become: its embeddings are far
    closer to onnxruntime's int8 output than the fp32 model's are. ``tuned``: also
    after the weights have moved (fine-tuned with a large learning rate), when the
    export is quantized on the original's activation statistics as the recipe does."""
    import onnx

    from compression.pipeline.distill.params import DistillParams
    from compression.pipeline.distill.recipe import write_student
    from compression.pipeline.distill.student import load_teacher
    from compression.pipeline.export_onnx import export_onnx
    from compression.pipeline.qat.fakequant import plan_linears
    from compression.pipeline.qat.train import batch_feed, fine_tune, text_embeddings
    from compression.pipeline.textdata import encode

    candidate = next(c for c in DEFAULT_CANDIDATES if c.name == name)
    tokenizer = teacher / "tokenizer.json"
    calibration, sample = texts(40, seed=1), texts(30, seed=2)
    original = load_teacher(teacher, DistillParams(layers=1)).model
    model = copy.deepcopy(original).requires_grad_(True)
    plans = plan_linears(model, (batch_feed(tokenizer, [t], 64) for t in calibration), candidate)
    fp32_onnx = Path(export_onnx(str(teacher), str(tmp_path / "fp32")).output_path)
    feeds = [encode(tokenizer, [t]).all_feeds() for t in calibration]
    absmax, sensitivity = activation_absmax(onnx.load(str(fp32_onnx)), feeds)
    exported = fp32_onnx
    if tuned:
        params = QatParams(steps=40, learning_rate=5e-3, batch_size=8, max_length=64)
        fine_tune(original, model, plans, candidate, texts(200, seed=5), tokenizer, params, _quiet)
        folder = write_student(model, teacher, tmp_path / "tuned")
        exported = Path(export_onnx(str(folder), str(tmp_path / "tuned-onnx")).output_path)
        moved = max(
            float((a - b).abs().max())
            for a, b in zip(model.parameters(), original.parameters(), strict=True)
        )
        assert moved > 0.01, "the weights must move for this case to mean anything"
    int8 = tmp_path / "int8.onnx"
    build_candidate(candidate, onnx.load(str(exported)), absmax, sensitivity, int8)
    real_int8 = _onnx_embeddings(int8, tokenizer, sample)
    simulated = text_embeddings(model, sample, tokenizer, 64, (plans, candidate))
    fp32 = text_embeddings(model, sample, tokenizer, 64)
    assert _cos_gap(fp32, real_int8) > 0
    assert _cos_gap(simulated, real_int8) < 0.1 * _cos_gap(fp32, real_int8)


def test_fine_tuning_brings_the_int8_model_closer_to_the_original(
    teacher: Path, tmp_path: Path
) -> None:
    """End to end on the tiny encoder: trains, exports, quantizes with the chosen
    candidate, and measures the int8 model against the original fp32 export."""
    train = write_jsonl(tmp_path / "train.jsonl", texts(300, seed=3))
    out = tmp_path / "out"
    out.mkdir()
    stages: list[str] = []
    result = quantize_int8_qat(
        str(teacher),
        str(out),
        QatParams(steps=60, learning_rate=1e-4, require_target=False, heldout_samples=60),
        progress=lambda f, stage, msg: stages.append(stage),
        calibration_path=str(train),
    )
    assert Path(result.output_path) == out / "model.int8.onnx"
    assert (out / "tokenizer.json").is_file()
    assert result.recipe == "onnx-int8-qat"
    metrics = result.metrics
    assert metrics["chosen"] == CHOSEN
    tuning = metrics["fine_tuning"]
    assert tuning["steps"] == 60 and tuning["source"] == "training dataset"
    before, after = tuning["simulated_before"], tuning["simulated_after"]
    assert 1 - after["cosine_mean"] < 1 - before["cosine_mean"]
    assert "fine-tuning" in stages
    # Against the original, an int8 model is never perfect.
    assert 0.9 < metrics["fidelity"]["cosine_mean"] < 1.0
    assert not list(out.glob("tmp*")), "the working folder is cleaned up"


def test_int8_figures_are_measured_against_the_reference_model(
    teacher: Path, tmp_path: Path
) -> None:
    """quantize_int8_auto(reference_path=...) compares to that model: a different
    reference gives a worse figure than the model itself."""
    import torch

    from compression.pipeline.auto_int8 import AutoInt8Params, quantize_int8_auto
    from compression.pipeline.distill.params import DistillParams
    from compression.pipeline.distill.recipe import write_student
    from compression.pipeline.distill.student import load_teacher
    from compression.pipeline.export_onnx import export_onnx

    model = load_teacher(teacher, DistillParams(layers=1)).model
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    other = write_student(model, teacher, tmp_path / "other")
    original = export_onnx(str(teacher), str(tmp_path / "a")).output_path
    changed = export_onnx(str(other), str(tmp_path / "b")).output_path
    params = AutoInt8Params(candidates=(CHOSEN,), require_target=False, heldout_samples=40)
    own = quantize_int8_auto(changed, str(tmp_path / "own"), params)
    against = quantize_int8_auto(changed, str(tmp_path / "ref"), params, reference_path=original)
    assert against.metrics["fidelity"]["cosine_mean"] < own.metrics["fidelity"]["cosine_mean"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"candidate": "nope"}, "unknown candidate"),
        ({"candidate": "nbits8-sensitive"}, "not simulated"),
        ({"candidate": "smoothquant-0.8-uint8"}, "not simulated"),
    ],
)
def test_it_refuses_candidates_it_cannot_simulate(
    teacher: Path, tmp_path: Path, params: dict[str, str], message: str
) -> None:
    with pytest.raises(QatError, match=message):
        quantize_int8_qat(str(teacher), str(tmp_path), QatParams(candidate=params["candidate"]))


def test_it_refuses_bad_parameters() -> None:
    bad: list[dict[str, Any]] = [
        {"steps": 0},
        {"batch_size": 1},
        {"learning_rate": 0.5},
        {"max_length": 2},
    ]
    for fields in bad:
        with pytest.raises(QatError):
            QatParams(**fields)


def test_it_refuses_a_classifier_and_a_model_without_tokenizer(tmp_path: Path) -> None:
    classifier = build_classifier_teacher(tmp_path / "cls")
    with pytest.raises(QatError, match="sentence-embedding"):
        quantize_int8_qat(str(classifier), str(tmp_path / "o1"))
    bare = build_teacher(tmp_path / "bare", layers=2)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(QatError, match="tokenizer"):
        quantize_int8_qat(str(bare), str(tmp_path / "o2"))


def test_it_refuses_too_little_training_text(teacher: Path, tmp_path: Path) -> None:
    few = write_jsonl(tmp_path / "few.jsonl", texts(10, seed=4))
    with pytest.raises(QatError, match="at least 64"):
        quantize_int8_qat(
            str(teacher), str(tmp_path), QatParams(steps=5), calibration_path=str(few)
        )


def test_a_refusal_inside_the_job_reaches_the_operator_as_its_own_sentence() -> None:
    """The worker shows a QatError's message itself, not "an unexpected error"."""
    from compression.pipeline.runner import ConverterCrashError
    from compression.tasks import failure_sentence

    message = "the model has no tokenizer.json; fine-tuning needs its tokenizer"
    crash = ConverterCrashError(f"onnx-int8-qat failed: QatError: {message}")
    assert failure_sentence(crash) == message
    assert failure_sentence(QatError(message)) == message
