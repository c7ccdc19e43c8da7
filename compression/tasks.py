"""Celery tasks: thin wrappers that claim a Job row, call pure pipeline code, and
record the outcome. Tasks take primary keys; progress lives in the database."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compression.models import Job, JobCancelledError, JobStatus, ModelVersion, VersionStatus
from compression.pipeline.archive import extract_zip
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.formats import model_root
from compression.pipeline.inspect import inspect_model
from compression.services import archive_limits
from compression.storage import local_copy

log = logging.getLogger(__name__)


@contextlib.contextmanager
def materialized(version: ModelVersion) -> Iterator[Path]:
    """The version as a local model path: the file itself, or the unpacked zip folder."""
    with local_copy(version.storage_key) as path:
        if not version.is_zip:
            yield path
            return
        with tempfile.TemporaryDirectory(dir=settings.TMP_DIR) as tmp:
            extract_zip(path, Path(tmp), archive_limits())
            yield model_root(Path(tmp))


@shared_task(acks_late=True)
def inspect_version(job_id: int) -> None:
    job = Job.claim(job_id)
    if job is None:
        return
    version = job.version
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.INSPECTING)
    try:
        job.report(0.1, "fetching", f"inspecting {version.original_filename}")
        with materialized(version) as path:
            job.report(0.4, "inspecting")
            inspection = inspect_model(path, version.format)
    except JobCancelledError:
        _mark_version(version, VersionStatus.FAILED, "inspection was cancelled")
        return
    except InvalidModelError as exc:
        _fail(job, version, str(exc))
        return
    except Exception as exc:
        log.exception("inspection of version %s crashed", version.pk)
        _fail(job, version, f"inspection crashed: {type(exc).__name__}: {exc}")
        return
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(
            status=VersionStatus.READY, inspection=inspection, error=""
        )
        job.append_log(f"{inspection.get('parameters', 0):,} parameters")
        job.finish(JobStatus.SUCCEEDED, result=version)


def _fail(job: Job, version: ModelVersion, message: str) -> None:
    with transaction.atomic():
        job.append_log(message)
        job.finish(JobStatus.FAILED, error=message)
        _mark_version(version, VersionStatus.FAILED, message)


def _mark_version(version: ModelVersion, status: str, error: str) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(status=status, error=error)


@shared_task
def reap_stale_jobs() -> int:
    """Fail running jobs whose worker stopped sending heartbeats (killed, OOM, lost)."""
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    reaped = 0
    for job in Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
        reason = (
            f"worker stopped responding: no heartbeat for {settings.JOB_HEARTBEAT_TIMEOUT} s "
            "(killed, out of memory or lost)"
        )
        with transaction.atomic():
            job.append_log(reason)
            if job.finish(JobStatus.FAILED, error=reason):
                reaped += 1
                if job.kind == "inspect":
                    _mark_version(job.version, VersionStatus.FAILED, reason)
    return reaped
