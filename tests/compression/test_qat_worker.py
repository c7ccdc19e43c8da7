"""onnx-int8-qat as a job in a real Celery worker: an int8 ONNX child of a Hugging Face
encoder, measured against that encoder; refusals before queueing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compression.models import Job, ModelVersion
from tests.compression.distill_helpers import (
    build_classifier_teacher,
    build_decoder,
    build_teacher,
    texts,
    write_jsonl,
)
from tests.compression.helpers import upload
from tests.compression.test_distill_worker import _dataset, _finished
from tests.conftest import Worker, wait_for
from tests.fixtures.tiny_models import zip_dir

pytestmark = pytest.mark.django_db(transaction=True)


def _hf_version(api: Any, folder: Path, name: str) -> int:
    body = upload(api, zip_dir(folder, folder.with_suffix(".zip")), name=name).json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready", 120)
    return int(body["id"])


def _start(api: Any, version: int, params: dict[str, Any], **datasets: int) -> Any:
    return api.post(
        "/api/v1/jobs",
        {"version": version, "recipe": "onnx-int8-qat", "params": params, **datasets},
    )


def test_it_fine_tunes_quantizes_and_measures_against_the_original(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    encoder = _hf_version(alice_api, build_teacher(tmp_path / "enc", layers=2), "enc")
    train = _dataset(alice_api, write_jsonl(tmp_path / "train.jsonl", texts(300)))
    params = {"steps": 20, "require_target": False, "heldout_samples": 40, "threads": 1}
    started = _start(alice_api, encoder, params, calibration_dataset=train)
    assert started.status_code == 201, started.content
    job = _finished(started.json()["id"])
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    assert job.result_version_id is not None
    child = ModelVersion.objects.get(pk=job.result_version_id)
    assert child.format == "onnx" and child.parent_id == encoder
    assert child.recipe == "onnx-int8-qat"
    assert child.metrics["fine_tuning"]["steps"] == 20
    assert "original" in child.metrics["measured_against"]
    # The worker's own assessment compares the int8 ONNX with the uploaded encoder.
    assert 0.5 < child.metrics["fidelity"]["cosine_mean"] < 1.0
    assert "MatMulInteger" in child.metrics["op_types"]
    assert "fine-tuned 20 steps" in job.log
    assert child.lineage_info["datasets"]["calibration"]["id"] == train


def test_it_refuses_models_it_cannot_fine_tune_before_queueing(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    encoder = _hf_version(alice_api, build_teacher(tmp_path / "enc", layers=2), "enc")
    decoder = _hf_version(alice_api, build_decoder(tmp_path / "gpt"), "gpt")
    classifier = _hf_version(alice_api, build_classifier_teacher(tmp_path / "cls"), "cls")
    jobs_before = Job.objects.count()
    cases: list[tuple[int, dict[str, Any], str]] = [
        (decoder, {}, "must be a BERT-style encoder"),
        (classifier, {}, "sentence-embedding encoders"),
        (encoder, {"candidate": "nbits8-sensitive"}, "not simulated"),
        (encoder, {"steps": 0}, "steps must be at least 1"),
        (encoder, {"learning_rate": 3}, "learning_rate"),
    ]
    for version, params, message in cases:
        response = _start(alice_api, version, params)
        assert response.status_code == 400, (params, response.content)
        assert message in response.json()["error"]
    assert Job.objects.count() == jobs_before
