"""Creating and cancelling compression jobs, and registering datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.files.storage import default_storage
from django.db import transaction

from accounts.models import audit
from compression.derive import sha256_of
from compression.models import (
    ACTIVE_JOB_STATUSES,
    Dataset,
    DatasetKind,
    Job,
    JobKind,
    JobStatus,
    ModelVersion,
    VersionStatus,
)
from compression.pipeline.textdata import DatasetError, load_jsonl, load_npz
from compression.recipes import (
    RecipeError,
    check_applicable,
    check_model_size,
    check_params,
    check_recipe,
)
from compression.sensor_datasets import SENSOR_SUFFIXES, sensor_dataset_facts
from compression.services import MissingObjectError, RegistryError
from compression.storage import safe_filename, store_file
from compression.tasks import run_compression

MAX_DATASET_ROWS = 100_000


class JobConflictError(RegistryError):
    status = 409


def _dataset(dataset_id: int | None, role: str) -> Dataset | None:
    if dataset_id is None:
        return None
    found = Dataset.objects.filter(pk=dataset_id).first()
    if found is None:
        raise MissingObjectError(f"{role} dataset {dataset_id} does not exist")
    return found


def create_job(
    *,
    user: Any,
    version: ModelVersion,
    recipe: str,
    params: dict[str, Any] | None = None,
    eval_dataset: int | None = None,
    calibration_dataset: int | None = None,
) -> Job:
    """Validate and queue a compression job.

    Raises:
        RegistryError: the version is not ready, the recipe does not apply, a parameter
            or dataset is wrong (400), or the same job is already queued or running (409).
    """
    if version.status != VersionStatus.READY:
        raise RegistryError(
            f"version {version.pk} is {version.status}; only ready versions compress"
        )
    try:
        info = check_recipe(recipe, version.format)
        clean_params = check_params(recipe, params or {})
        check_model_size(clean_params, version.inspection or {})
        check_applicable(info, clean_params, version.inspection or {})
    except RecipeError as exc:
        raise RegistryError(str(exc)) from exc
    _refuse_requantizing(version, recipe)
    evaluation = _dataset(eval_dataset, "evaluation")
    calibration = _dataset(calibration_dataset, "calibration")
    if info.needs_calibration and calibration is None:
        raise RegistryError(f"recipe {recipe!r} needs a calibration_dataset")
    if info.trains:
        _check_training_data(calibration, evaluation)
    with transaction.atomic():
        # Lock the version row so two identical requests cannot both pass the check.
        ModelVersion.objects.select_for_update().get(pk=version.pk)
        twin = Job.objects.filter(
            version=version,
            recipe=recipe,
            params=clean_params,
            status__in=ACTIVE_JOB_STATUSES,
            eval_dataset=evaluation,
            calibration_dataset=calibration,
        ).first()
        if twin is not None:
            raise JobConflictError(f"the same job is already {twin.status} (job {twin.pk})")
        job = Job.objects.create(
            kind=JobKind.COMPRESS,
            recipe=recipe,
            params=clean_params,
            version=version,
            eval_dataset=evaluation,
            calibration_dataset=calibration,
            created_by=user,
        )
        audit(user, "job.create", job, recipe=recipe, version=version.pk)
        transaction.on_commit(lambda: _enqueue(job.pk))
    return job


INT8_RECIPES = ("onnx-int8-auto", "onnx-int8-dynamic", "onnx-int8-static")


def _refuse_requantizing(version: ModelVersion, recipe: str) -> None:
    """Refuse int8 on an already-int8 graph before queueing, naming its fp32 original in
    the lineage when there is one (that is the version to quantize).

    Raises:
        RegistryError: the version is already quantized.
    """
    found = (version.inspection or {}).get("quantized")
    if recipe not in INT8_RECIPES or not found:
        return
    original = next(
        (
            v
            for v in reversed(version.lineage()[:-1])
            if v.format == version.format and not (v.inspection or {}).get("quantized")
        ),
        None,
    )
    advice = (
        f"run {recipe} on v{original.number}, its fp32 original"
        if original is not None
        else "upload its fp32 original as a version of this model, or publish this one as it "
        "is (recipe as-is)"
    )
    raise RegistryError(
        f"v{version.number} is already quantized ({found}); quantizing it again only adds "
        f"error: {advice}."
    )


def _check_training_data(train: Dataset | None, evaluation: Dataset | None) -> None:
    """Training recipes learn from text: refuse tensor data and sets too small to learn from."""
    from compression.pipeline.distill.params import MIN_TRAIN_TEXTS

    for role, ds in (("training (calibration)", train), ("evaluation", evaluation)):
        if ds is not None and ds.kind != DatasetKind.TEXT:
            raise RegistryError(f"the {role} dataset must be JSONL text, not {ds.kind}")
    if train is not None and train.rows < MIN_TRAIN_TEXTS:
        raise RegistryError(
            f"the training (calibration) dataset has {train.rows} texts; "
            f"training needs at least {MIN_TRAIN_TEXTS}"
        )


def _enqueue(job_id: int) -> None:
    run_compression.delay(job_id)


def cancel_job(user: Any, job: Job) -> Job:
    """Cancel a queued or running job; a running converter is stopped at its next report.

    Raises:
        JobConflictError: the job already finished.
    """
    with transaction.atomic():
        job.append_log(f"cancelled by {user.get_username()}")
        if not job.finish(JobStatus.CANCELLED, error="cancelled by the operator"):
            job.refresh_from_db()
            raise JobConflictError(f"job {job.pk} already {job.status}")
        audit(user, "job.cancel", job)
    return job


def register_dataset(
    *, user: Any, name: str, path: Path, filename: str, size: int, kind: str = ""
) -> Dataset:
    """Validate and store an evaluation/calibration dataset (``kind="sensor"``, or a
    ``.ts``/``.csv`` file: sensor windows for the sensor recipe).

    Raises:
        RegistryError: empty, malformed, too many rows, or an unknown file type.
    """
    name = (name or "").strip() or Path(filename).stem
    if size == 0:
        raise RegistryError("the dataset file is empty")
    suffix = Path(filename).suffix.lower()
    if kind not in ("", DatasetKind.SENSOR):
        raise RegistryError(f"unknown dataset kind {kind!r}; leave it empty or use 'sensor'")
    try:
        if kind == DatasetKind.SENSOR or suffix in SENSOR_SUFFIXES:
            dataset_kind, rows, has_labels = sensor_dataset_facts(path, filename)
            kind = dataset_kind
        elif suffix == ".jsonl":
            examples = load_jsonl(path)
            kind, rows = DatasetKind.TEXT, len(examples)
            has_labels = rows > 0 and all(e.label is not None for e in examples)
        elif suffix == ".npz":
            arrays = load_npz(path)
            kind, rows, has_labels = DatasetKind.TENSORS, len(next(iter(arrays.values()))), False
        else:
            raise RegistryError(
                'datasets are .jsonl ({"text", "label"?} per line), .npz, '
                "or sensor data (.ts, .csv, or .npz with kind=sensor)"
            )
    except DatasetError as exc:
        # Name the user's file, not our temporary path.
        message = str(exc).replace(str(path), Path(filename).name)
        raise RegistryError(f"invalid dataset: {message}") from exc
    if rows > MAX_DATASET_ROWS:
        raise RegistryError(f"dataset has {rows} rows; the limit is {MAX_DATASET_ROWS}")
    digest = sha256_of(path)
    key = f"datasets/{digest}/{safe_filename(filename)}"
    newly = store_file(key, path)
    try:
        dataset = Dataset.objects.create(
            name=name[:100],
            kind=kind,
            storage_key=key,
            sha256=digest,
            size_bytes=size,
            rows=rows,
            has_labels=has_labels,
            created_by=user,
        )
    except BaseException:
        if newly:
            default_storage.delete(key)
        raise
    audit(user, "dataset.upload", dataset, rows=rows)
    return dataset
