"""A worker killed with SIGKILL in the middle of a job: the job is not lost.

Real processes: a Celery worker (prefork) running a real int8 compression job is killed
with kill -9 (parent and pool child, as the OOM killer or a power cut would), a fresh
worker starts, and the reaper (the beat task, called here) re-queues the job whose
heartbeat stopped. With the embedded filesystem broker the killed worker's message is
gone for good, so the re-queue is what saves the job; the scratch folder the dead
attempt left behind is removed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings as django_settings

from compression.models import Job, ModelVersion
from compression.tasks import job_tmp_prefix, reap_stale_jobs
from tests.compression.helpers import upload
from tests.conftest import start_worker, stop_worker, wait_for
from tests.e2e.agent_helpers import _text_model_zip

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
HEARTBEAT_TIMEOUT = 10  # the smallest the setting accepts; the workers use it too


def _kill_9(pid: int) -> None:
    worker = psutil.Process(pid)
    for process in [*worker.children(recursive=True), worker]:
        process.kill()
    psutil.wait_procs([worker], timeout=10)


def _scratch(job_id: int) -> list[Path]:
    return list(Path(django_settings.TMP_DIR).glob(f"{job_tmp_prefix(job_id)}*"))


def test_it_requeues_a_job_whose_worker_was_killed_and_cleans_its_scratch(
    alice_api: Any, tmp_path: Path, settings: Any
) -> None:
    settings.JOB_HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT
    env = {"TINYFLEET_JOB_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)}
    first = start_worker(tmp_path, env)
    queue = first.queue
    try:
        uploaded = upload(alice_api, _text_model_zip(tmp_path), name="tiny-embedder")
        assert uploaded.status_code == 201, uploaded.content
        wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
        job = alice_api.post(
            "/api/v1/jobs", {"version": uploaded.json()["id"], "recipe": "onnx-int8-dynamic"}
        ).json()
        # Mid-job: claimed, its scratch folder made, not finished.
        wait_for(lambda: Job.objects.get(pk=job["id"]).status == "running" and _scratch(job["id"]))
        _kill_9(first.proc.pid)
    finally:
        stop_worker(first)
    assert Job.objects.get(pk=job["id"]).status == "running"  # nobody will finish it

    second = start_worker(tmp_path, env, queue=queue)
    try:
        time.sleep(HEARTBEAT_TIMEOUT + 1)
        assert Job.objects.get(pk=job["id"]).status == "running"  # the message died too
        dead = _scratch(job["id"])
        assert dead and reap_stale_jobs() == 1
        assert not any(folder.exists() for folder in dead)
        done = wait_for(lambda: (j := Job.objects.get(pk=job["id"])).is_finished and j, timeout=180)
        assert done.status == "succeeded", (done.error, second.log())
        assert done.attempts == 2 and "re-queued" in done.log
        # The job is marked done just before its own scratch folder is removed.
        wait_for(lambda: not _scratch(job["id"]), timeout=30)
    finally:
        stop_worker(second)
