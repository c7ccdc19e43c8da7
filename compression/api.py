"""Registry endpoints of the operator API."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from django.core.files.storage import default_storage
from django.db.models import Prefetch, Q
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponseBase,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404
from ninja import File, Form, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from accounts.models import Role
from accounts.permissions import require_role
from accounts.validation import MAX_ID, MAX_OFFSET
from compression.jobs import cancel_job, create_job, register_dataset
from compression.models import Dataset, Job, JobStatus, ModelVersion, RegisteredModel
from compression.recipes import CATALOGUE
from compression.schemas import (
    ConflictOut,
    ErrorOut,
    JobList,
    JobOut,
    ModelList,
    UploadedVersionOut,
    VersionOut,
)
from compression.services import (
    RegistryError,
    delete_version,
    register_upload,
    set_primary_output,
)
from compression.tokenizer_attach import attach_tokenizer
from compression.uploads import HashedUploadedFile, too_large_message, upload_too_large

router = Router(tags=["registry"])
ERRORS: dict[int, Any] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


def _model_json(model: RegisteredModel) -> dict[str, Any]:
    return {
        "id": model.pk,
        "name": model.name,
        "task": model.task,
        "description": model.description,
        "created_at": model.created_at,
        "versions": [VersionOut.from_version(v) for v in model.versions.all()],
    }


def _hashed(file: UploadedFile) -> HashedUploadedFile:
    # FILE_UPLOAD_HANDLERS stores every upload through compression.uploads, as a temporary
    # file with its SHA-256; the parameter's declared type does not know it.
    return cast(HashedUploadedFile, file)


@router.post(
    "/models",
    response={201: UploadedVersionOut, 409: ConflictOut, 413: ErrorOut, **ERRORS},
    summary="Upload a model (multipart: file, name, task); returns the new version",
)
def upload_model(
    request: HttpRequest,
    # Optional here so that an oversized upload (parsing stops at the cap, later fields
    # are never read) is answered with 413, not a confusing "field required".
    name: Form[str] = "",
    task: Form[str] = "",
    file: UploadedFile | None = File(None),  # noqa: B008 - ninja's parameter marker
) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    if upload_too_large(request):
        raise HttpError(413, too_large_message())
    if file is None:
        raise HttpError(400, "no file in the upload (multipart field 'file')")
    hashed = _hashed(file)
    try:
        version, job = register_upload(
            user=request.user,
            name=name,
            task=task,
            path=Path(hashed.temporary_file_path()),
            filename=hashed.name or "upload",
            sha256=hashed.sha256,
            size=hashed.size or 0,
        )
    except RegistryError as exc:
        extra = {}
        if hasattr(exc, "existing"):
            extra["version"] = VersionOut.from_version(exc.existing)
        return Status(exc.status, {"error": str(exc), **extra})
    finally:
        file.close()
    return Status(201, {**VersionOut.from_version(version), "job": job.pk})


@router.get("/models", response={200: ModelList, **ERRORS}, summary="List models")
def list_models(
    request: HttpRequest,
    q: str = Query("", max_length=200),
    sort: Literal["name", "-name", "created", "-created"] = "name",
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> dict[str, Any]:
    ordering = {
        "name": "name",
        "-name": "-name",
        "created": "created_at",
        "-created": "-created_at",
    }
    if sort not in ordering:
        raise HttpError(400, f"sort must be one of: {', '.join(ordering)}")
    models = RegisteredModel.objects.all()
    if q:
        models = models.filter(Q(name__icontains=q) | Q(task__icontains=q))
    total = models.count()
    page = models.order_by(ordering[sort]).prefetch_related(
        Prefetch("versions", ModelVersion.objects.select_related("model", "created_by"))
    )[max(offset, 0) : max(offset, 0) + max(1, min(limit, 500))]
    return {"items": [_model_json(m) for m in page], "count": total}


def _version(version_id: int) -> ModelVersion:
    return get_object_or_404(
        ModelVersion.objects.select_related("model", "created_by"), pk=version_id
    )


@router.get("/versions/{version_id}", response={200: VersionOut, **ERRORS})
def get_version(request: HttpRequest, version_id: int) -> dict[str, Any]:
    return VersionOut.from_version(_version(version_id))


@router.get("/versions/{version_id}/file", response={200: None, **ERRORS})
def download_version(request: HttpRequest, version_id: int) -> HttpResponseBase:
    version = _version(version_id)
    try:
        path = default_storage.path(version.storage_key)
    except NotImplementedError:
        # Object storage: hand out a short-lived presigned URL instead of proxying bytes.
        return HttpResponseRedirect(default_storage.url(version.storage_key))
    return FileResponse(open(path, "rb"), as_attachment=True, filename=version.original_filename)


class PrimaryOutputIn(Schema):
    output: str


@router.post(
    "/versions/{version_id}/primary-output",
    response={200: VersionOut, **ERRORS},
    summary="Choose the output every figure, golden set and device pipeline uses",
)
def choose_primary_output(
    request: HttpRequest, version_id: int, body: PrimaryOutputIn
) -> dict[str, Any]:
    require_role(request, Role.OPERATOR)
    try:
        version = set_primary_output(request.user, _version(version_id), body.output)
    except RegistryError as exc:
        raise HttpError(exc.status, str(exc)) from None
    return VersionOut.from_version(version)


@router.post(
    "/versions/{version_id}/tokenizer",
    response={201: UploadedVersionOut, **ERRORS},
    summary="Attach a tokenizer (multipart files, or from_version): returns the new version",
)
def post_tokenizer(
    request: HttpRequest,
    version_id: int,
    from_version: Form[int | None] = None,
    files: list[UploadedFile] | None = File(None),  # noqa: B008 - ninja's parameter marker
) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    version = _version(version_id)
    source = _version(from_version) if from_version else None
    try:
        uploaded = {
            Path(f.name or "").name: Path(_hashed(f).temporary_file_path()) for f in files or []
        }
        created, job = attach_tokenizer(request.user, version, files=uploaded, source=source)
    except RegistryError as exc:
        raise HttpError(exc.status, str(exc)) from None
    except AttributeError:
        raise HttpError(400, "tokenizer files must be sent as multipart uploads") from None
    return Status(201, {**VersionOut.from_version(created), "job": job.pk})


@router.delete("/versions/{version_id}", response={204: None, 409: ErrorOut, **ERRORS})
def remove_version(request: HttpRequest, version_id: int) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    version = _version(version_id)
    try:
        delete_version(request.user, version)
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(204, None)


@router.get("/jobs", response={200: JobList, **ERRORS}, summary="List jobs, newest first")
def list_jobs(
    request: HttpRequest,
    status: JobStatus | None = None,
    version: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(100, ge=1, le=500),
) -> dict[str, Any]:
    jobs = Job.objects.all()
    if status:
        jobs = jobs.filter(status=status)
    if version is not None:
        jobs = jobs.filter(version_id=version)
    total = jobs.count()
    return {
        "items": [JobOut.from_job(j) for j in jobs[: max(1, min(limit, 500))]],
        "count": total,
    }


@router.get("/jobs/{job_id}", response={200: JobOut, **ERRORS})
def get_job(request: HttpRequest, job_id: int) -> dict[str, Any]:
    return JobOut.from_job(get_object_or_404(Job, pk=job_id))


class JobIn(Schema):
    version: int
    recipe: str
    params: dict[str, Any] = {}
    eval_dataset: int | None = None
    calibration_dataset: int | None = None


class DatasetOut(Schema):
    id: int
    name: str
    kind: str
    sha256: str
    size_bytes: int
    rows: int
    has_labels: bool
    created_at: datetime


class DatasetList(Schema):
    items: list[DatasetOut]
    count: int


class RecipeOut(Schema):
    name: str
    title: str
    input_formats: list[str]
    output_format: str
    needs_calibration: bool
    recommended: bool
    description: str


def _dataset_json(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.pk,
        "name": dataset.name,
        "kind": dataset.kind,
        "sha256": dataset.sha256,
        "size_bytes": dataset.size_bytes,
        "rows": dataset.rows,
        "has_labels": dataset.has_labels,
        "created_at": dataset.created_at,
    }


class RecipeList(Schema):
    items: list[RecipeOut]
    count: int


@router.get("/recipes", response=RecipeList, summary="Compression recipes and where they apply")
def list_recipes(request: HttpRequest) -> dict[str, Any]:
    items = [
        {
            **{k: v for k, v in dataclasses.asdict(info).items() if k != "precheck"},
            "input_formats": sorted(info.input_formats),
        }
        for info in CATALOGUE.values()
    ]
    return {"items": items, "count": len(items)}


@router.post(
    "/jobs",
    response={201: JobOut, 409: ErrorOut, **ERRORS},
    summary="Start a compression or export job on a version",
)
def start_job(request: HttpRequest, body: JobIn) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    version = _version(body.version)
    try:
        job = create_job(
            user=request.user,
            version=version,
            recipe=body.recipe,
            params=body.params,
            eval_dataset=body.eval_dataset,
            calibration_dataset=body.calibration_dataset,
        )
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(201, JobOut.from_job(job))


@router.post("/jobs/{job_id}/cancel", response={200: JobOut, 409: ErrorOut, **ERRORS})
def cancel(request: HttpRequest, job_id: int) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    job = get_object_or_404(Job, pk=job_id)
    try:
        cancel_job(request.user, job)
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    return Status(200, JobOut.from_job(job))


@router.post(
    "/datasets",
    response={201: DatasetOut, 413: ErrorOut, **ERRORS},
    summary="Upload a dataset (.jsonl, .npz; sensor data: .ts, .csv or kind=sensor)",
)
def upload_dataset(
    request: HttpRequest,
    name: Form[str] = "",
    kind: Form[str] = "",
    file: UploadedFile | None = File(None),  # noqa: B008
) -> Status[Any]:
    require_role(request, Role.OPERATOR)
    if upload_too_large(request):
        raise HttpError(413, too_large_message())
    if file is None:
        raise HttpError(400, "no file in the upload (multipart field 'file')")
    try:
        dataset = register_dataset(
            user=request.user,
            name=name,
            path=Path(_hashed(file).temporary_file_path()),
            filename=file.name or "dataset",
            size=file.size or 0,
            kind=kind,
        )
    except RegistryError as exc:
        return Status(exc.status, {"error": str(exc)})
    finally:
        file.close()
    return Status(201, _dataset_json(dataset))


@router.get("/datasets", response=DatasetList)
def list_datasets(request: HttpRequest) -> dict[str, Any]:
    datasets = Dataset.objects.all()[:500]
    return {"items": [_dataset_json(d) for d in datasets], "count": Dataset.objects.count()}
