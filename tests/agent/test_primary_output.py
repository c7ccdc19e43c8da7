"""The agent reads the primary output the signed record names (not output [0]) and
feeds fixed-length graphs with a float 4-D mask; real onnxruntime and tokenizers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tinyfleet_agent import Predictor
from tinyfleet_agent._internal.record import InvalidRecordError, PipelineSpec

from tests.compression.realworld_models import (
    POOLED,
    build_four_output_onnx,
    build_static_4d_mask_onnx,
    write_tokenizer,
)

SENTENCE = "the cat sat on the mat"


def _spec(output: str | None) -> PipelineSpec:
    return PipelineSpec(
        task="text-embedding",
        tokenizer="tokenizer.json",
        max_seq_len=64,
        pooling="mean",
        normalize=True,
        output=output,
    )


def _model_dir(tmp: Path, build: object) -> Path:
    folder = tmp / "slot"
    folder.mkdir()
    build(folder / "model.onnx")  # type: ignore[operator]
    write_tokenizer(folder)
    return folder


def test_it_keeps_records_without_an_output_unchanged_and_round_trips_one() -> None:
    assert "output" not in _spec(None).to_dict()
    spec = _spec(POOLED)
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
    assert PipelineSpec.from_dict(_spec(None).to_dict()).output is None
    with pytest.raises(InvalidRecordError):
        _spec("bad\nname")


def test_it_serves_the_primary_output_and_puts_it_first_for_the_self_test(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, build_four_output_onnx)
    predictor = Predictor(folder, _spec(POOLED), runtime="onnxruntime")
    assert predictor.output_index == 3
    got = np.asarray(predictor.predict([SENTENCE])[0]["embedding"])
    encoded = predictor.encoder.encode([SENTENCE])  # type: ignore[union-attr]
    raw = predictor.runtime.run(encoded.feeds)
    want = raw[3][0] / np.linalg.norm(raw[3][0])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert predictor.run_feeds(encoded.feeds)[0].shape == raw[3].shape
    # Output [0] is the echoed ids: what reading the first output would have served.
    assert np.array_equal(raw[0], encoded.feeds["input_ids"])


def test_it_refuses_a_record_naming_an_output_the_model_lacks(tmp_path: Path) -> None:
    from tinyfleet_agent.predictor import RuntimeLoadError

    folder = _model_dir(tmp_path, build_four_output_onnx)
    with pytest.raises(RuntimeLoadError, match="no output"):
        Predictor(folder, _spec("missing"), runtime="onnxruntime")


def test_it_pads_to_the_fixed_length_and_builds_the_4d_mask(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, lambda p: build_static_4d_mask_onnx(p, seq=16))
    predictor = Predictor(folder, _spec(None), runtime="onnxruntime")
    short = np.asarray(predictor.predict(["the cat"])[0]["embedding"])
    padded = np.asarray(predictor.predict(["the cat sat"])[0]["embedding"])
    assert short.shape == padded.shape and not np.allclose(short, padded)
    # Same text, batch of two padded to the longer one: the mask keeps the answer.
    both = predictor.predict(["the cat", "the cat sat on the mat and the dog"])
    np.testing.assert_allclose(np.asarray(both[0]["embedding"]), short, atol=1e-5)
    shutil.rmtree(folder)
