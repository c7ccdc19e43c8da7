"""Inspection jobs run in a real Celery worker process against the test database."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from compression.models import Job, ModelVersion
from compression.tasks import reap_stale_jobs
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.fixtures.tiny_models import (
    build_tiny_bert_onnx,
    build_tiny_hf_dir,
    build_tiny_tflite,
    zip_dir,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _finished(version_id: int) -> ModelVersion | None:
    version = ModelVersion.objects.get(pk=version_id)
    return version if version.status in ("ready", "failed") else None


def test_it_inspects_an_onnx_upload_in_the_worker(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    body = upload(alice_api, build_tiny_bert_onnx(tmp_path / "tiny.onnx")).json()
    version = wait_for(lambda: _finished(body["id"]))
    assert version.status == "ready", (version.error, celery_worker.log())
    inspection = version.inspection
    assert [i["name"] for i in inspection["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert inspection["outputs"][0]["name"] == "last_hidden_state"
    assert inspection["parameters"] > 0
    assert inspection["ops"]["MatMul"] > 0
    job = Job.objects.get(pk=body["job"])
    assert (job.status, job.progress, job.result_version_id) == ("succeeded", 1.0, version.pk)
    api_view = alice_api.get(f"/api/v1/versions/{version.pk}").json()
    assert api_view["status"] == "ready"
    assert api_view["inspection"]["parameters"] == inspection["parameters"]


def test_it_inspects_onnx_with_external_data_tflite_and_hf_zips(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    ext = build_tiny_bert_onnx(tmp_path / "ext" / "model.onnx", external_data=True)
    uploads = {
        "onnx-ext": (zip_dir(ext.parent, tmp_path / "ext.zip"), "text-embedding"),
        "tflite": (build_tiny_tflite(tmp_path / "tiny.tflite"), "tensor"),
        "hf": (
            zip_dir(build_tiny_hf_dir(tmp_path / "hf"), tmp_path / "hf.zip", top="mini"),
            "text-embedding",
        ),
    }
    ids = {}
    for name, (path, task) in uploads.items():
        response = upload(alice_api, path, name=name, task=task)
        assert response.status_code == 201, response.content
        ids[name] = response.json()["id"]
    results = {name: wait_for(lambda i=i: _finished(i)) for name, i in ids.items()}
    for name, version in results.items():
        assert version.status == "ready", (name, version.error, celery_worker.log())
    assert results["onnx-ext"].format == "onnx"
    assert results["tflite"].format == "tflite"
    assert results["tflite"].inspection["ops"]
    assert results["hf"].format == "hf-dir"
    assert results["hf"].inspection["parameters"] > 0


def test_it_fails_a_job_whose_workers_keep_dying(
    alice_api: Any, tmp_path: Path, settings: Any, transactional_db: None
) -> None:
    from tests.conftest import start_worker, stop_worker

    body = upload(alice_api, build_tiny_bert_onnx(tmp_path / "t.onnx")).json()
    # Simulate the last allowed attempt's worker dying: 'running', heartbeat stopped.
    Job.objects.filter(pk=body["job"]).update(
        status="running",
        attempts=Job.MAX_ATTEMPTS,
        heartbeat_at=timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT + 5),
    )
    assert reap_stale_jobs() == 1
    job = Job.objects.get(pk=body["job"])
    assert job.status == "failed"
    assert "no heartbeat" in job.error
    assert ModelVersion.objects.get(pk=body["id"]).status == "failed"
    # A late redelivery of the message must not resurrect the reaped job.
    worker = start_worker(tmp_path)
    try:
        from compression.tasks import inspect_version

        inspect_version.delay(body["job"])
        time.sleep(3)
        assert Job.objects.get(pk=body["job"]).status == "failed"
    finally:
        stop_worker(worker)


def test_it_runs_a_job_queued_while_the_worker_was_killed(
    alice_api: Any, tmp_path: Path, transactional_db: None
) -> None:
    """kill -9 on the worker: the job waits in the broker and the next worker runs it once."""
    from tests.conftest import start_worker, stop_worker

    first = start_worker(tmp_path)
    queue = first.queue
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    body = upload(
        alice_api, build_tiny_bert_onnx(tmp_path / "t.onnx")
    ).json()  # queued, no consumer
    second = start_worker(tmp_path, queue=queue)
    try:
        version = wait_for(lambda: _finished(body["id"]))
        assert version.status == "ready"
        assert Job.objects.filter(version_id=body["id"]).count() == 1
    finally:
        stop_worker(second)


def test_it_fails_inspection_of_a_corrupt_tflite_with_a_clear_error(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    good = build_tiny_tflite(tmp_path / "good.tflite").read_bytes()
    # Keep the header valid so the upload check passes, but break the body.
    corrupt = good[:16] + bytes(len(good) - 16)
    response = alice_api.post(
        "/api/v1/models",
        {"file": SimpleUploadedFile("corrupt.tflite", corrupt), "name": "c", "task": "tensor"},
    )
    assert response.status_code == 201, response.content
    version = wait_for(lambda: _finished(response.json()["id"]))
    assert version.status == "failed"
    assert version.error
    assert Job.objects.get(pk=response.json()["job"]).status == "failed"
