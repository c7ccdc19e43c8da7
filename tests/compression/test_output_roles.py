"""Output roles, the primary output and honest fidelity on graphs shaped like third-party
exports (echoed inputs first, a pooled embedding under a meaningless name, label ids
beside logits, a fixed length with a float 4-D mask). Real onnxruntime throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.pipeline.assess import assess, sanity
from compression.pipeline.evaluate import open_session
from compression.pipeline.inspect import inspect_model
from compression.pipeline.outputs import annotate_outputs, graph_roles, probe_roles
from compression.pipeline.quantize import DynamicInt8Params, quantize_int8_dynamic
from tests.compression.realworld_models import (
    POOLED,
    build_classifier_onnx,
    build_four_output_onnx,
    build_static_4d_mask_onnx,
    write_tokenizer,
)


def _roles(path: Path, task: str) -> dict[str, object]:
    inspection = inspect_model(path, "onnx")
    probe = probe_roles(str(path), inspection["inputs"])
    return annotate_outputs(inspection, task, graph_roles(path), probe)


def test_it_gives_every_output_of_a_sentence_embedding_export_its_role(tmp_path: Path) -> None:
    result = _roles(build_four_output_onnx(tmp_path / "m.onnx"), "text-embedding")
    roles = {o["name"]: o["role"] for o in result["outputs"]}  # type: ignore[attr-defined]
    assert roles == {
        "onnx::Identity_7": "echo",
        "onnx::Identity_8": "mask",
        "last_hidden_state": "token-states",
        POOLED: "pooled",
    }
    assert result["primary_output"] == POOLED


def test_it_prefers_logits_over_label_ids_for_a_classifier(tmp_path: Path) -> None:
    result = _roles(build_classifier_onnx(tmp_path / "c.onnx"), "text-classification")
    roles = {o["name"]: o["role"] for o in result["outputs"]}  # type: ignore[attr-defined]
    assert roles == {"label_ids": "label-ids", "logits": "logits"}
    assert result["primary_output"] == "logits"


def test_it_measures_the_pooled_output_not_the_echoed_input_ids(tmp_path: Path) -> None:
    folder = tmp_path / "parent"
    folder.mkdir()
    parent = build_four_output_onnx(folder / "model.onnx", hidden=64)
    write_tokenizer(folder)
    child_dir = tmp_path / "child"
    quantize_int8_dynamic(str(parent), str(child_dir), DynamicInt8Params(per_channel=False))
    write_tokenizer(child_dir)
    result = assess(
        str(folder), str(child_dir), "text-embedding", str(tmp_path / "g.npz"), output=POOLED
    )
    fidelity = result["fidelity"]
    assert fidelity["output"] == POOLED and fidelity["measured"] is True
    assert 0.5 < fidelity["cosine_mean"] < 1.0  # int8 changed the embedding a little
    # Output [0] echoes input_ids: equal bytes on a changed model, flagged, never a score.
    echo = assess(str(folder), str(child_dir), "tensor", str(tmp_path / "e.npz"))
    assert echo["fidelity"]["measured"] is False
    assert "perfect score" in echo["fidelity"]["reason"]


def test_it_feeds_a_fixed_length_graph_with_a_float_4d_mask(tmp_path: Path) -> None:
    folder = tmp_path / "static"
    folder.mkdir()
    model = build_static_4d_mask_onnx(folder / "model.onnx", seq=16, hidden=64)
    write_tokenizer(folder)
    session = open_session(model)
    assert session.fixed_sequence == 16
    short = {"input_ids": np.array([[2, 5, 6, 3]]), "attention_mask": np.ones((1, 4), np.int64)}
    long = {
        "input_ids": np.array([[2, 5, 6, 3, 0, 0]]),
        "attention_mask": np.array([[1, 1, 1, 1, 0, 0]]),
    }
    # Padding positions are masked out by the additive mask, as on the device.
    a, b = session.run(None, short)[0], session.run(None, long)[0]
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-5, atol=1e-5)
    child_dir = tmp_path / "child"
    quantize_int8_dynamic(str(model), str(child_dir), DynamicInt8Params())
    write_tokenizer(child_dir)
    result = assess(str(folder), str(child_dir), "text-embedding", str(tmp_path / "g.npz"))
    assert result["fidelity"]["measured"] is True and result["inputs"] == "built-in sentences"
    assert 0.5 < result["fidelity"]["cosine_mean"] < 1.0


def test_it_compares_label_ids_for_equality_never_as_floats(tmp_path: Path) -> None:
    folder = tmp_path / "clf"
    folder.mkdir()
    model = build_classifier_onnx(folder / "model.onnx")
    write_tokenizer(folder)
    child_dir = tmp_path / "child"
    quantize_int8_dynamic(str(model), str(child_dir), DynamicInt8Params())
    write_tokenizer(child_dir)
    result = assess(
        str(folder),
        str(child_dir),
        "text-classification",
        str(tmp_path / "g.npz"),
        output="label_ids",
    )
    assert result["fidelity"]["metric"] == "exact"
    assert 0.0 <= result["fidelity"]["agreement"] <= 1.0
    assert "cosine_mean" not in result["fidelity"] and "max_abs_error" not in result["fidelity"]


@pytest.mark.parametrize(
    ("ref", "cand", "same", "reason"),
    [
        ([np.ones((1, 4))] * 3, [np.ones((1, 4)) * 0.9] * 3, False, "constant output"),
        (
            [np.arange(4.0) + i for i in range(3)],
            [np.arange(4.0) + i for i in range(3)],
            False,
            "perfect score",
        ),
        ([np.arange(4.0) + i for i in range(3)], [np.full(4, np.nan)] * 3, False, "NaN"),
    ],
)
def test_it_refuses_a_figure_that_cannot_be_trusted(
    ref: list[np.ndarray], cand: list[np.ndarray], same: bool, reason: str
) -> None:
    verdict = sanity(ref, cand, same)
    assert verdict["measured"] is False and reason in verdict["reason"]


def test_it_trusts_a_perfect_score_when_the_bytes_did_not_change() -> None:
    outputs = [np.arange(4.0) + i for i in range(3)]
    assert sanity(outputs, outputs, same_weights=True) == {"measured": True}


def test_it_selects_int8_candidates_on_the_pooled_output_and_keeps_every_output(
    tmp_path: Path,
) -> None:
    import onnx

    from compression.pipeline.auto_int8 import AutoInt8Params, quantize_int8_auto

    folder = tmp_path / "export"
    folder.mkdir()
    model = build_four_output_onnx(folder / "model.onnx", hidden=64)
    write_tokenizer(folder)
    params = AutoInt8Params(
        candidates=("dynamic-per-channel",),
        eval_samples=40,
        heldout_samples=30,
        calibration_samples=16,
        latency_rounds=1,
        require_target=False,
    )
    result = quantize_int8_auto(str(model), str(tmp_path / "out"), params, output=POOLED)
    metrics = result.metrics
    assert metrics["task"] == "embedding" and metrics["fidelity"]["cosine_mean"] < 1.0
    held = metrics["fidelity_heldout"]
    assert held["count"] == 30 and 0.0 < held["cosine_mean"] < 1.0
    assert set(metrics["heldout_lower_bounds"]) == {"cosine_mean_lb", "nn_agreement_lb"}
    assert metrics["heldout_lower_bounds"]["cosine_mean_lb"] <= held["cosine_mean"]
    outputs = [o.name for o in onnx.load(result.output_path).graph.output]
    assert outputs == ["onnx::Identity_7", "onnx::Identity_8", "last_hidden_state", POOLED]
