"""Fidelity to the original (the root of a lineage), measured directly, in-process on tiny
teachers: it agrees with the student's own assessment where both apply, falls back to
neighbour ranks for a narrower student, and refuses to invent a figure elsewhere. Also
the two extra distillation losses (relation and layer) on a tiny teacher."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.pipeline.distill.assess import assess_student
from compression.pipeline.distill.params import DistillParams
from compression.pipeline.distill.recipe import distill
from compression.pipeline.export_onnx import export_onnx
from compression.pipeline.origin import fidelity_to_origin
from compression.pipeline.runner import no_progress
from tests.compression.distill_helpers import build_teacher, texts, write_jsonl


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_teacher(tmp_path_factory.mktemp("teacher") / "t")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", texts(240))


def _student(teacher: Path, train: Path, out: Path, **kw: object) -> Path:
    params = DistillParams(
        **{"layers": 2, "batch_size": 16, "eval_every": 5, "held_out": 16, **kw}  # type: ignore[arg-type]
    )
    return Path(distill(str(teacher), str(out), params, no_progress, str(train)).output_path)


def test_a_chain_step_measured_against_the_root_matches_the_students_own_figure(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    """teacher -> student -> ONNX: the ONNX export measured against the teacher must give
    the student's cosine against the teacher (same held-out text, export is lossless)."""
    student = _student(teacher, train_file, tmp_path / "student")
    own = assess_student(str(teacher), str(student), "text-embedding", str(tmp_path / "g.npz"))
    onnx = Path(export_onnx(str(student), str(tmp_path / "onnx")).output_path)
    record = fidelity_to_origin(str(teacher), str(onnx.parent), "text-embedding")
    assert record["measured"] is True
    assert record["inputs"] == "built-in corpus (held-out split)"
    assert record["cosine_mean"] == pytest.approx(own["fidelity"]["cosine_mean"], abs=2e-3)
    # Not the export's own figure against its parent (lossless, about 1.0): the teacher's.
    assert record["cosine_mean"] < 0.9999
    assert 0.0 <= record["nn_agreement"] <= 1.0 and record["count"] == own["examples"]


def test_a_narrower_student_is_compared_by_neighbour_ranks_only(
    teacher: Path, train_file: Path, tmp_path: Path
) -> None:
    student = _student(teacher, train_file, tmp_path / "narrow", hidden_size=16)
    record = fidelity_to_origin(str(teacher), str(student), "text-embedding")
    assert record["measured"] is True and "cosine_mean" not in record
    assert 0.0 <= record["nn_agreement"] <= 1.0 and "width 16 vs 32" in record["compared_in"]


def test_it_says_not_measured_rather_than_inventing_a_figure(teacher: Path, tmp_path: Path) -> None:
    tensor = fidelity_to_origin(str(teacher), str(teacher), "tensor")
    assert tensor == {
        "measured": False,
        "reason": "fidelity to the original is measured for text models, not tensor",
    }
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((teacher / name).read_bytes())
    missing = fidelity_to_origin(str(bare), str(bare), "text-embedding")
    assert missing["measured"] is False and "no tokenizer" in missing["reason"]


@pytest.mark.parametrize(
    "losses",
    [{"relation_weight": 1.0}, {"layer_weight": 1.0}, {"layer_weight": 1.0, "hidden_size": 16}],
)
def test_the_relation_and_layer_losses_train_the_student(
    teacher: Path, train_file: Path, tmp_path: Path, losses: dict[str, float]
) -> None:
    params = DistillParams(
        layers=2,
        batch_size=16,
        eval_every=5,
        held_out=32,
        patience=50,
        **losses,  # type: ignore[arg-type]
    )
    result = distill(str(teacher), str(tmp_path / "out"), params, no_progress, str(train_file))
    history = result.metrics["training"]["history"]
    assert result.metrics["heldout_fidelity"]["cosine_mean"] > history[0]["cosine_mean"]
    assert result.params["relation_weight"] == losses.get("relation_weight", 0.0)


def test_it_refuses_negative_or_meaningless_loss_settings() -> None:
    with pytest.raises(ValueError, match="loss weights"):
        DistillParams(relation_weight=-1.0)
    with pytest.raises(ValueError, match="relation_temperature"):
        DistillParams(relation_weight=1.0, relation_temperature=0.0)
