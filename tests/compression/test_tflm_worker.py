"""The tflm recipe through the API and a real Celery worker subprocess (PostgreSQL,
Redis): a derived .tflite version with fidelity measured on TFLite Micro, the arena,
lineage, and the firmware sources downloadable; too-large models refused up front."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from compression.models import Job, ModelVersion
from compression.pipeline.tflm.carray import parse_c_array, parse_header_constants
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.fixtures.tiny_models import build_tiny_hf_dir, zip_dir

pytestmark = pytest.mark.django_db(transaction=True)


def _ready_hf(api: Any, tmp_path: Path, hidden: int = 128) -> dict[str, Any]:
    folder = build_tiny_hf_dir(tmp_path / f"hf{hidden}", layers=2, hidden=hidden)
    body: dict[str, Any] = upload(api, zip_dir(folder, tmp_path / f"hf{hidden}.zip")).json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready", timeout=120)
    return body


@pytest.mark.slow  # a full litert-torch conversion in the worker
def test_it_runs_a_tflm_job_to_a_version_with_metrics_and_firmware_files(
    celery_worker: Worker, alice_api: Any, bob_api: Any, alice: Any, tmp_path: Path
) -> None:
    parent = _ready_hf(alice_api, tmp_path)
    started = alice_api.post(
        "/api/v1/jobs",
        {"version": parent["id"], "recipe": "tflm", "params": {"sequence_length": 16}},
    )
    assert started.status_code == 201, started.content
    job: Job = wait_for(
        lambda: (j := Job.objects.get(pk=started.json()["id"])).is_finished and j, timeout=400
    )
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    child = ModelVersion.objects.get(pk=job.result_version_id)
    assert child.format == "tflite" and child.recipe == "tflm" and child.parent_id == parent["id"]
    metrics = child.metrics
    assert 0.9 < metrics["fidelity"]["cosine_mean"] < 1.0
    assert metrics["fidelity"]["sequence_length"] == 16
    assert metrics["gelu_swap_fidelity"]["cosine_mean"] > 0.99
    assert metrics["arena_bytes"] > 10_000 and metrics["tflm_latency"]["p50_ms"] > 0
    assert metrics["evaluated_on"] == "built-in sentences"
    assert child.inspection["format"] == "tflite" and "GELU" not in str(child.inspection)
    assert child.lineage_info["recipe"] == "tflm" and child.lineage_info["params"]["gelu"]
    assert child.golden_sha256 and child.pipeline["runtime"] == "tflite-micro"

    download = alice_api.get(f"/api/v1/versions/{child.pk}/file")
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))) as archive:
        names = set(archive.namelist())
        assert {"model.tflite", "model_data.cc", "model_data.h", "tokenizer.json"} <= names
        model = archive.read("model.tflite")
        assert parse_c_array(archive.read("model_data.cc").decode()) == model
        header = parse_header_constants(archive.read("model_data.h").decode())
    assert header["kTensorArenaSize"] == metrics["arena_bytes"]
    assert header["g_model_data_len"] == len(model)
    # Viewers may read versions; anonymous requests may not.
    assert bob_api.get(f"/api/v1/versions/{child.pk}/file").status_code == 200
    assert Client().get(f"/api/v1/versions/{child.pk}/file").status_code == 401

    page = Client()
    page.force_login(alice)
    html = page.get(f"/versions/{child.pk}/").content.decode()
    assert "model_data.cc, model_data.h" in html and str(metrics["arena_bytes"]) in html


def test_it_refuses_a_model_too_large_for_a_microcontroller_and_queues_nothing(
    alice_api: Any, tmp_path: Path
) -> None:
    folder = build_tiny_hf_dir(tmp_path / "hf", layers=2, hidden=64)
    body = upload(alice_api, zip_dir(folder, tmp_path / "hf.zip")).json()
    ModelVersion.objects.filter(pk=body["id"]).update(
        status="ready", inspection={"parameters": 5_000_000}
    )
    jobs_before = Job.objects.count()
    response = alice_api.post("/api/v1/jobs", {"version": body["id"], "recipe": "tflm"})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "model has 5,000,000 parameters; this recipe accepts at most 4,000,000 "
        "(set max_parameters to raise the bound)"
    )
    assert Job.objects.count() == jobs_before
    assert ModelVersion.objects.count() == 1
    bad = alice_api.post(
        "/api/v1/jobs", {"version": body["id"], "recipe": "tflm", "params": {"gelu": "erf"}}
    )
    assert bad.status_code == 400 and "gelu must be one of sigmoid, tanh" in bad.json()["error"]


def test_a_tflm_job_the_converter_refuses_fails_with_its_message_and_leaves_nothing(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    from tests.compression.helpers import temp_files

    parent = _ready_hf(alice_api, tmp_path, hidden=32)
    versions_before, temp_before = ModelVersion.objects.count(), temp_files()
    started = alice_api.post(
        "/api/v1/jobs",
        {"version": parent["id"], "recipe": "tflm", "params": {"sequence_length": 100}},
    )
    assert started.status_code == 201, started.content
    job: Job = wait_for(
        lambda: (j := Job.objects.get(pk=started.json()["id"])).is_finished and j, timeout=120
    )
    assert job.status == "failed"
    assert "sequence_length 100 exceeds the model's 64 positions" in job.error
    assert ModelVersion.objects.count() == versions_before
    assert temp_files() <= temp_before
