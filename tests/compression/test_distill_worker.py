"""The distill recipe as a job in a real Celery worker: a student version with lineage and
held-out fidelity; refusals before queueing; cancel keeps the checkpoint; a worker process
killed mid-training is replaced and the job continues from the checkpoint."""

from __future__ import annotations

import io
import os
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.checkpoints import checkpoint_dir
from compression.models import Job, ModelVersion
from tests.compression.distill_helpers import build_decoder, build_teacher, texts, write_jsonl
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.fixtures.tiny_models import zip_dir

pytestmark = pytest.mark.django_db(transaction=True)

# Many cheap steps: long enough to interrupt between two checkpoints, short to finish.
SLOW_PARAMS = {
    "layers": 2,
    "batch_size": 4,
    "eval_every": 120,
    "checkpoint_every": 5,
    "held_out": 16,
    "patience": 1,
    "min_delta": 1.0,
    "threads": 1,
}


def _teacher(api: Any, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    folder = build_teacher(tmp_path / "teacher", **kw)
    body: dict[str, Any] = upload(
        api, zip_dir(folder, tmp_path / "teacher.zip"), name="teacher"
    ).json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready", 120)
    return body


def _dataset(api: Any, path: Path) -> int:
    with path.open("rb") as handle:
        response = api.post("/api/v1/datasets", {"file": handle, "name": path.stem})
    assert response.status_code == 201, response.content
    return int(response.json()["id"])


def _finished(job_id: int, timeout: float = 300) -> Job:
    try:
        job: Job = wait_for(
            lambda: (j := Job.objects.get(pk=job_id)).is_finished and j, timeout=timeout
        )
    except AssertionError:
        stuck = Job.objects.get(pk=job_id)
        raise AssertionError(f"job {job_id} {stuck.status} {stuck.stage}: {stuck.log}") from None
    return job


def _start(api: Any, version: int, params: dict[str, Any], **datasets: int) -> Any:
    return api.post(
        "/api/v1/jobs", {"version": version, "recipe": "distill", "params": params, **datasets}
    )


def test_it_distills_a_teacher_into_a_smaller_student_version(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    teacher = _teacher(alice_api, tmp_path)
    train = _dataset(alice_api, write_jsonl(tmp_path / "train.jsonl", texts(300)))
    started = _start(
        alice_api,
        teacher["id"],
        {"layers": 2, "batch_size": 16, "eval_every": 5, "held_out": 16, "threads": 1},
        calibration_dataset=train,
    )
    assert started.status_code == 201, started.content
    job = _finished(started.json()["id"])
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    student = ModelVersion.objects.get(pk=job.result_version_id)
    assert student.format == "hf-dir" and student.parent_id == teacher["id"]
    assert student.recipe == "distill" and student.inspection["num_layers"] == 2
    assert student.metrics["student_parameters"] < student.metrics["teacher_parameters"]
    assert student.metrics["training"]["steps"] > 0
    assert 0 < student.metrics["fidelity"]["cosine_mean"] <= 1.0 + 1e-6
    # Measured on text the student never trained on.
    assert student.metrics["evaluated_on"] == "built-in corpus (held-out split)"
    assert "held-out" in job.log and "ETA" in job.log
    with default_storage.open(student.storage_key) as handle:
        names = set(zipfile.ZipFile(io.BytesIO(handle.read())).namelist())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert student.golden_sha256 and student.lineage_info["datasets"]["calibration"]["id"] == train
    assert not checkpoint_dir(job).exists()  # done: nothing left behind


def test_it_refuses_bad_distillation_requests_before_queueing(
    alice_api: Any, tmp_path: Path, celery_worker: Worker
) -> None:
    teacher = _teacher(alice_api, tmp_path)
    jobs_before = Job.objects.count()
    tiny = _dataset(alice_api, write_jsonl(tmp_path / "tiny.jsonl", texts(10)))
    cases: list[tuple[dict[str, Any], dict[str, int], str]] = [
        ({"layers": 4}, {}, "smaller than the teacher"),
        ({"layers": 2, "hidden_size": 64}, {}, "wider than the teacher"),
        ({"layers": 2}, {"calibration_dataset": tiny}, "needs at least 64"),
        ({"layers": "two"}, {}, "layers must be a positive integer"),
    ]
    for params, datasets, message in cases:
        response = _start(alice_api, teacher["id"], params, **datasets)
        assert response.status_code == 400, (params, response.content)
        assert message in response.json()["error"]
    assert Job.objects.count() == jobs_before

    decoder = zip_dir(build_decoder(tmp_path / "gpt"), tmp_path / "gpt.zip")
    body = upload(alice_api, decoder, name="decoder").json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready", 120)
    response = _start(alice_api, body["id"], {"layers": 1})
    assert response.status_code == 400
    assert "must be a BERT-style encoder" in response.json()["error"]
    assert "gpt2" in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b'{"text": "caf\xe9"}\n', "t.jsonl:1: not valid UTF-8")],
)
def test_it_refuses_an_empty_or_undecodable_training_dataset(
    alice_api: Any, content: bytes, message: str
) -> None:
    response = alice_api.post(
        "/api/v1/datasets", {"file": SimpleUploadedFile("t.jsonl", content), "name": "t"}
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_it_keeps_the_checkpoint_when_cancelled_and_resumes_from_it(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    teacher = _teacher(alice_api, tmp_path)
    train = _dataset(alice_api, write_jsonl(tmp_path / "train.jsonl", texts(600)))
    first = _start(alice_api, teacher["id"], SLOW_PARAMS, calibration_dataset=train).json()
    job = Job.objects.get(pk=first["id"])
    checkpoint = checkpoint_dir(job) / "checkpoint.pt"
    wait_for(checkpoint.is_file, 120, 0.05)
    cancelled = alice_api.post(f"/api/v1/jobs/{job.pk}/cancel").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(2)
    assert Job.objects.get(pk=job.pk).result_version_id is None
    assert checkpoint.is_file()  # kept for the next run with the same inputs
    assert not ModelVersion.objects.filter(parent_id=teacher["id"]).exists()

    again = _start(alice_api, teacher["id"], SLOW_PARAMS, calibration_dataset=train).json()
    done = _finished(again["id"])
    assert done.status == "succeeded", (done.error, done.log)
    assert "resumed from the checkpoint at step" in done.log
    assert (
        ModelVersion.objects.get(pk=done.result_version_id).metrics["training"]["resumed_from_step"]
        >= 10
    )
    assert not checkpoint.exists()


def test_it_resumes_from_the_checkpoint_after_the_worker_process_is_killed(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    teacher = _teacher(alice_api, tmp_path)
    train = _dataset(alice_api, write_jsonl(tmp_path / "train.jsonl", texts(600)))
    job_id = _start(alice_api, teacher["id"], SLOW_PARAMS, calibration_dataset=train).json()["id"]
    checkpoint = checkpoint_dir(Job.objects.get(pk=job_id)) / "checkpoint.pt"
    wait_for(checkpoint.is_file, 120, 0.05)
    # The prefork child running the task dies as under the OOM killer; the worker's main
    # process re-queues the message (acks_late + reject_on_worker_lost).
    children = psutil.Process(celery_worker.proc.pid).children()
    assert children, celery_worker.log()
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
    job = _finished(job_id)
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    assert job.attempts == 2
    student = ModelVersion.objects.get(pk=job.result_version_id)
    assert student.metrics["training"]["resumed_from_step"] >= 5
    assert "resumed from the checkpoint at step" in job.log
