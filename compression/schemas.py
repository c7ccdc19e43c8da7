"""JSON shapes of the registry API (see DESIGN.md, "Public surface")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ninja import Schema


class VersionOut(Schema):
    id: int
    model: int
    model_name: str
    number: int
    format: str
    status: str
    error: str
    size_bytes: int
    sha256: str
    original_filename: str
    parent: int | None
    recipe: str
    params: dict[str, Any]
    inspection: dict[str, Any]
    metrics: dict[str, Any]
    pipeline: dict[str, Any]
    golden_sha256: str
    primary_output: str | None
    warnings: list[str]
    lineage: dict[str, Any]
    created_by: str | None
    created_at: datetime
    file_url: str

    @staticmethod
    def from_version(version: Any) -> dict[str, Any]:
        return {
            "id": version.pk,
            "model": version.model_id,
            "model_name": version.model.name,
            "number": version.number,
            "format": version.format,
            "status": version.status,
            "error": version.error,
            "size_bytes": version.size_bytes,
            "sha256": version.sha256,
            "original_filename": version.original_filename,
            "parent": version.parent_id,
            "recipe": version.recipe,
            "params": version.params,
            "inspection": version.inspection,
            "metrics": version.metrics,
            "primary_output": version.primary_output,
            "warnings": version.warnings(),
            "pipeline": version.pipeline,
            "golden_sha256": version.golden_sha256,
            "lineage": version.lineage_info,
            "created_by": version.created_by.get_username() if version.created_by else None,
            "created_at": version.created_at,
            "file_url": f"/api/v1/versions/{version.pk}/file",
        }


class ModelOut(Schema):
    id: int
    name: str
    task: str
    description: str
    created_at: datetime
    versions: list[VersionOut]


class ModelList(Schema):
    items: list[ModelOut]
    count: int


class JobOut(Schema):
    id: int
    kind: str
    recipe: str
    params: dict[str, Any]
    version: int
    status: str
    progress: float
    stage: str
    result_version: int | None
    eval_dataset: int | None
    calibration_dataset: int | None
    metrics: dict[str, Any]
    error: str
    log: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def from_job(job: Any) -> dict[str, Any]:
        return {
            "id": job.pk,
            "kind": job.kind,
            "recipe": job.recipe,
            "params": job.params,
            "version": job.version_id,
            "status": job.status,
            "progress": job.progress,
            "stage": job.stage,
            "result_version": job.result_version_id,
            "eval_dataset": job.eval_dataset_id,
            "calibration_dataset": job.calibration_dataset_id,
            "metrics": job.metrics,
            "error": job.error,
            "log": job.log[-4000:],
            "attempts": job.attempts,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
        }


class JobList(Schema):
    items: list[JobOut]
    count: int


class UploadedVersionOut(VersionOut):
    job: int


class ErrorOut(Schema):
    error: str


class ConflictOut(Schema):
    error: str
    version: VersionOut | None = None
