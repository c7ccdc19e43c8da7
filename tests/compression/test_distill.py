"""The distillation pipeline in-process on tiny teachers: student initialisation, losses,
early stopping, checkpoints and resume, the built-in corpus, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compression.pipeline.corpus import build_corpus, clean_sentences, is_held_out
from compression.pipeline.distill.params import DistillError, DistillParams
from compression.pipeline.distill.recipe import distill
from compression.pipeline.distill.student import build_student, load_teacher, pick_layers
from tests.compression.distill_helpers import (
    build_classifier_teacher,
    build_decoder,
    build_teacher,
    texts,
    write_jsonl,
)


def _quiet(fraction: float, stage: str, message: str) -> None:
    pass


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_teacher(tmp_path_factory.mktemp("teacher") / "t")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", texts(400))


def test_it_takes_every_kth_layer_keeping_the_first_and_last() -> None:
    assert pick_layers(6, 3) == [0, 3, 5]
    assert pick_layers(6, 2) == [0, 5]
    assert pick_layers(12, 4) == [0, 4, 7, 11]
    assert pick_layers(6, 3, [1, 3, 5]) == [1, 3, 5]
    for bad in (0, 6, 7):
        with pytest.raises(DistillError):
            pick_layers(6, bad)
    with pytest.raises(DistillError, match="increasing"):
        pick_layers(6, 3, [3, 1, 5])


def test_it_copies_the_kept_teacher_layers_into_the_student(teacher: Path) -> None:
    import torch

    loaded = load_teacher(teacher, DistillParams(layers=2))
    student, kept, proj = build_student(loaded, DistillParams(layers=2))
    assert kept == [0, 3] and proj is None
    assert student.config.num_hidden_layers == 2
    t_state, s_state = loaded.model.state_dict(), student.state_dict()
    for s_i, t_i in enumerate(kept):
        name = "encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s_state[name.format(s_i)], t_state[name.format(t_i)])
    # Frozen word table by default: the optimizer only sees the layers.
    assert not student.embeddings.word_embeddings.weight.requires_grad


def test_it_builds_a_narrower_student_by_projection(teacher: Path) -> None:
    params = DistillParams(layers=2, hidden_size=16)
    student, _, proj = build_student(load_teacher(teacher, params), params)
    assert proj is not None and tuple(proj.shape) == (16, 32)
    assert student.config.hidden_size == 16
    # Projection rows are orthonormal, so P·Pᵀ = I.
    import torch

    assert torch.allclose(proj @ proj.T, torch.eye(16), atol=1e-4)


def test_it_distills_and_improves_held_out_fidelity_of_a_narrow_student(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    params = DistillParams(
        layers=2, hidden_size=16, batch_size=16, eval_every=5, held_out=32, patience=50
    )
    result = distill(str(teacher), str(tmp_path / "out"), params, _quiet, str(train_file))
    history = result.metrics["training"]["history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == result.metrics["training"]["steps"]
    assert result.metrics["heldout_fidelity"]["cosine_mean"] > history[0]["cosine_mean"]
    out = Path(result.output_path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert (out / "teacher_projection.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert result.metrics["student_parameters"] < result.metrics["teacher_parameters"]


def test_it_stops_early_when_held_out_fidelity_stops_improving(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    # An improvement threshold no run can meet: every measurement counts as stale.
    params = DistillParams(
        layers=2, batch_size=8, eval_every=3, patience=2, min_delta=1.0, held_out=16
    )
    result = distill(str(teacher), str(tmp_path / "out"), params, _quiet, str(train_file))
    training = result.metrics["training"]
    assert training["stopped_early"] and training["steps"] == 6 < training["planned_steps"]
    assert training["best_step"] == 0


def test_it_resumes_from_its_checkpoint_instead_of_restarting(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    params = DistillParams(
        layers=2, batch_size=16, eval_every=4, checkpoint_every=4, held_out=16, patience=100
    )
    ckpt = tmp_path / "ckpt"
    seen: list[str] = []

    class Interrupt(Exception):
        pass

    def stop_after_first_checkpoint(fraction: float, stage: str, message: str) -> None:
        seen.append(message)
        if (ckpt / "checkpoint.pt").is_file():
            raise Interrupt  # what a cancel or a dead worker does to the run

    with pytest.raises(Interrupt):
        distill(
            str(teacher), str(tmp_path / "a"), params, stop_after_first_checkpoint,
            str(train_file), checkpoint_dir=str(ckpt),
        )  # fmt: skip
    messages: list[str] = []
    result = distill(
        str(teacher), str(tmp_path / "b"), params,
        lambda f, s, m: messages.append(m), str(train_file), checkpoint_dir=str(ckpt),
    )  # fmt: skip
    resumed = result.metrics["training"]["resumed_from_step"]
    assert resumed >= 4 and resumed % 4 == 0
    assert any(f"resumed from the checkpoint at step {resumed}" in m for m in messages)
    assert result.metrics["training"]["steps"] == result.metrics["training"]["planned_steps"]


def test_it_distills_a_classifier_with_kl_and_labels(tmp_path: Path) -> None:
    teacher = build_classifier_teacher(tmp_path / "clf", labels=3)
    rows = texts(300, seed=3)
    data = write_jsonl(tmp_path / "l.jsonl", rows, labels=[len(t) % 3 for t in rows])
    params = DistillParams(layers=2, batch_size=16, eval_every=5, held_out=16)
    result = distill(str(teacher), str(tmp_path / "out"), params, _quiet, str(data))
    assert result.pipeline["task"] == "classifier"
    assert 0.0 <= result.metrics["heldout_fidelity"]["agreement"] <= 1.0
    config = json.loads((Path(result.output_path) / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 3


@pytest.mark.parametrize(
    ("make", "params", "message"),
    [
        ("decoder", DistillParams(layers=1), "must be a BERT-style encoder"),
        ("teacher", DistillParams(layers=4), "smaller than the teacher"),
        ("teacher", DistillParams(layers=2, hidden_size=64), "wider than the teacher"),
    ],
)
def test_it_refuses_what_cannot_make_a_smaller_student(
    tmp_path: Path, make: str, params: DistillParams, message: str
) -> None:
    model = build_decoder(tmp_path / "d") if make == "decoder" else build_teacher(tmp_path / "t")
    with pytest.raises(DistillError, match=message):
        distill(str(model), str(tmp_path / "out"), params, _quiet)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "the edge"}\n' * 3, "needs at least 64"),
        (b'{"text": "caf\xe9 au lait"}\n', "not valid UTF-8"),
        (b'{"text": "ok"}\n{"broken"\n', "invalid JSON"),
    ],
)
def test_it_refuses_training_data_it_cannot_learn_from(
    teacher: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(content)
    with pytest.raises(DistillError, match=message) as info:
        distill(str(teacher), str(tmp_path / "out"), DistillParams(layers=2), _quiet, str(data))
    assert str(tmp_path) not in str(info.value)  # no worker paths in what users see


def test_it_cleans_prose_and_drops_code_from_docstrings() -> None:
    doc = """Return the sum of the values along the given axis.

    >>> np.sum([1, 2])
    3

    .. note:: Deprecated.

    See `numpy.add` for details. Call foo_bar(x) to reset it now please.
    """
    assert list(clean_sentences(doc)) == ["Return the sum of the values along the given axis."]


def test_it_builds_a_deduplicated_corpus_with_a_stable_held_out_split() -> None:
    corpus = build_corpus(limit=300, held_out_limit=40)
    assert len(corpus.train) == 300 and len(corpus.held_out) == 40
    assert not set(corpus.train) & set(corpus.held_out)
    assert len({s.lower() for s in corpus.train}) == 300
    assert all(is_held_out(s) for s in corpus.held_out)
    assert not any(is_held_out(s) for s in corpus.train)
    assert build_corpus(limit=300, held_out_limit=40).digest == corpus.digest


def test_it_validates_parameters_before_any_work() -> None:
    bad: list[dict[str, Any]] = [
        {"layers": 0},
        {"hidden_size": 4},
        {"task": "generate"},
        {"learning_rate": 3},
        {"cosine_weight": 0, "pooled_mse_weight": 0, "token_weight": 0},
        {"layer_map": "0,1"},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            DistillParams(**kwargs)
