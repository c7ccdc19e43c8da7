"""Fixtures for the compression pipeline tests: tiny models built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from compression.pipeline.archive import ArchiveLimits
from tests.fixtures.tiny_models import (
    build_tiny_bert_onnx,
    build_tiny_hf_dir,
    build_tiny_tflite,
)


@pytest.fixture
def limits() -> ArchiveLimits:
    return ArchiveLimits()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def tiny_onnx_external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding model.onnx and its external data file model.onnx.data."""
    folder = tmp_path_factory.mktemp("onnx_ext")
    build_tiny_bert_onnx(folder / "model.onnx", external_data=True)
    return folder


@pytest.fixture(scope="session")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tflite(tmp_path_factory.mktemp("tflite") / "model.tflite")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_hf_dir(tmp_path_factory.mktemp("hf") / "tiny-bert")
