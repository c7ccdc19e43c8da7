"""The signed record names the primary output only when it is not the first one, so
records of ordinary models stay exactly as older agents expect them."""

from __future__ import annotations

import pytest

from compression.models import ModelVersion
from fleet.security.record import pipeline_spec
from tests.fleet.test_publish import make_version

pytestmark = pytest.mark.django_db

OUTPUTS = [
    {"name": "onnx::Identity_7", "role": "echo"},
    {"name": "onnx::Shape_422", "role": "pooled"},
]


def _with_outputs(version: ModelVersion, primary: str) -> ModelVersion:
    version.inspection = {"outputs": OUTPUTS, "primary_output": primary}
    version.pipeline = {**version.pipeline, "output": primary}
    version.save(update_fields=["inspection", "pipeline"])
    return version


def test_it_names_a_primary_output_that_is_not_the_first() -> None:
    version = _with_outputs(make_version({"model.onnx": b"x"}), "onnx::Shape_422")
    spec = pipeline_spec(version, has_tokenizer=True)
    assert spec.output == "onnx::Shape_422"
    assert spec.to_dict()["output"] == "onnx::Shape_422"


def test_it_leaves_the_record_unchanged_when_the_first_output_is_primary() -> None:
    version = _with_outputs(make_version({"model.onnx": b"y"}), "onnx::Identity_7")
    assert "output" not in pipeline_spec(version, has_tokenizer=True).to_dict()
