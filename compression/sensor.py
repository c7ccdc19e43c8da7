"""Sensor models on the server: sensor datasets, and training a model from one.

Training has no parent model, so it starts from a *training spec*: a small JSON file
(architecture parameters + the datasets' digests) stored as version 1 of a new model
(format ``sensor-spec``, ready at once). The ``sensor-transformer`` job runs on that
version like any compression job and produces version 2, the trained int8 model
(lineage: spec -> trained), which publishes like any other TFLite version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from accounts.models import audit
from compression.jobs import create_job
from compression.models import (
    Dataset,
    DatasetKind,
    Format,
    Job,
    ModelVersion,
    RegisteredModel,
    Task,
    VersionStatus,
)
from compression.services import NAME_PATTERN, MissingObjectError, RegistryError
from compression.storage import content_key, store_file

__all__ = [
    "SENSOR_RECIPE",
    "sensor_rows",
    "start_training",
]

SENSOR_RECIPE = "sensor-transformer"
SPEC_FILENAME = "sensor-spec.json"


def _sensor_dataset(dataset_id: int | None, role: str, required: bool) -> Dataset | None:
    if dataset_id is None:
        if required:
            raise RegistryError(f"a {role} dataset is required")
        return None
    found = Dataset.objects.filter(pk=dataset_id).first()
    if found is None:
        raise MissingObjectError(f"{role} dataset {dataset_id} does not exist")
    if found.kind != DatasetKind.SENSOR:
        raise RegistryError(f"{role} dataset {dataset_id} is {found.kind}, not sensor data")
    return found


def _spec_bytes(task: str, params: dict[str, Any], train: Dataset, test: Dataset | None) -> bytes:
    spec = {
        "kind": "tinyfleet-sensor-spec",
        "format": 1,
        "task": task,
        "recipe": SENSOR_RECIPE,
        "params": params,
        "training_data": {"id": train.pk, "name": train.name, "sha256": train.sha256},
        "evaluation_data": (
            {"id": test.pk, "name": test.name, "sha256": test.sha256} if test else None
        ),
    }
    return json.dumps(spec, indent=2, sort_keys=True).encode()


def start_training(
    *,
    user: Any,
    name: str,
    dataset: int | None,
    eval_dataset: int | None = None,
    params: dict[str, Any] | None = None,
) -> tuple[ModelVersion, Job]:
    """Create the model, its spec version and the training job (queued on commit).

    Raises:
        RegistryError: bad name, missing/foreign datasets, invalid parameters, labels
            missing for classification, or a model of that name already exists (409).
    """
    from compression.recipes import RecipeError, check_params

    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise RegistryError(
            "name must be 1-100 characters: letters, digits, space, dot, dash or underscore"
        )
    if RegisteredModel.objects.filter(name=name).exists():
        raise ModelExistsError(f"a model named {name!r} already exists; choose another name")
    train = _sensor_dataset(dataset, "training", required=True)
    assert train is not None
    test = _sensor_dataset(eval_dataset, "evaluation", required=False)
    try:
        clean = check_params(SENSOR_RECIPE, params or {})
    except RecipeError as exc:
        raise RegistryError(str(exc)) from exc
    task = Task.SENSOR_ANOMALY if clean["task"] == "anomaly" else Task.SENSOR_CLASSIFICATION
    if task == Task.SENSOR_CLASSIFICATION and not train.has_labels:
        raise RegistryError(
            f"dataset {train.name!r} has no labels: classification needs them "
            '(set params.task to "anomaly" for unlabelled data)'
        )
    body = _spec_bytes(task, clean, train, test)
    digest = hashlib.sha256(body).hexdigest()
    key = content_key(digest, SPEC_FILENAME)
    with tempfile.TemporaryDirectory(dir=settings.TMP_DIR) as tmp:
        local = Path(tmp) / SPEC_FILENAME
        local.write_bytes(body)
        store_file(key, local)
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(name=name, task=task, created_by=user)
            version = ModelVersion.objects.create(
                model=model,
                number=1,
                format=Format.SENSOR_SPEC,
                storage_key=key,
                original_filename=SPEC_FILENAME,
                size_bytes=len(body),
                sha256=digest,
                status=VersionStatus.READY,
                inspection={"parameters": 0, "inputs": [], "outputs": [], "spec": True},
                created_by=user,
            )
            audit(user, "version.sensor-spec", version, model=name, dataset=train.pk)
            job = create_job(
                user=user,
                version=version,
                recipe=SENSOR_RECIPE,
                params=clean,
                eval_dataset=test.pk if test else None,
                calibration_dataset=train.pk,
            )
    except IntegrityError as exc:
        _drop_spec(key)
        raise ModelExistsError(f"a model named {name!r} already exists") from exc
    except BaseException:
        _drop_spec(key)
        raise
    return version, job


def _drop_spec(key: str) -> None:
    # Nothing partial: the spec file goes unless another version already shares it.
    if not ModelVersion.objects.filter(storage_key=key).exists():
        default_storage.delete(key)


class ModelExistsError(RegistryError):
    status = 409


def sensor_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-class rows of the int8 model's confusion matrix, for the version page."""
    report = (metrics.get("evaluation") or {}).get("tflm_int8") or {}
    classes, matrix = report.get("classes") or [], report.get("confusion_matrix") or []
    per_class = report.get("per_class") or {}
    return [
        {"name": name, "counts": counts, **per_class.get(name, {})}
        for name, counts in zip(classes, matrix, strict=False)
    ]
