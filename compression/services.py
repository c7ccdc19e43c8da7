"""Registry operations used by both the pages and the REST API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Max

from accounts.models import audit
from compression.archives import archive_limits
from compression.models import (
    Job,
    JobKind,
    ModelVersion,
    RegisteredModel,
    Task,
)
from compression.pipeline.errors import InvalidModelError
from compression.pipeline.formats import sniff_upload
from compression.storage import content_key, store_file
from compression.tasks import inspect_version

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


class RegistryError(Exception):
    """A request the registry refuses; `status` is the HTTP status to answer with."""

    status = 400


class MissingObjectError(RegistryError):
    """A request names an object (e.g. a dataset) that does not exist."""

    status = 404


class DuplicateVersionError(RegistryError):
    status = 409

    def __init__(self, existing: ModelVersion) -> None:
        super().__init__(
            f"this file is already version {existing.number} of model "
            f"{existing.model.name!r} (id {existing.pk}); nothing was stored again"
        )
        self.existing = existing


class VersionInUseError(RegistryError):
    status = 409


def _check_name_and_task(name: str, task: str) -> None:
    if not NAME_PATTERN.match(name or ""):
        raise RegistryError(
            "name must be 1-100 characters: letters, digits, space, dot, dash or underscore"
        )
    if task not in Task.values:
        raise RegistryError(f"task must be one of: {', '.join(Task.values)}")


def register_upload(
    *,
    user: Any,
    name: str,
    task: str,
    path: Path,
    filename: str,
    sha256: str,
    size: int,
    derived: dict[str, Any] | None = None,
) -> tuple[ModelVersion, Job]:
    """Validate an uploaded file, store it once, and queue its inspection.

    Raises:
        RegistryError: bad name/task, invalid model file (message says why),
            or the same bytes already registered for this model (DuplicateVersionError).
    """
    name = (name or "").strip()
    _check_name_and_task(name, task)
    if size == 0:
        raise RegistryError("the uploaded file is empty")
    try:
        fmt = sniff_upload(path, filename, archive_limits())
    except InvalidModelError as exc:
        raise RegistryError(str(exc)) from exc
    existing_model = RegisteredModel.objects.filter(name=name).first()
    if existing_model is not None:
        if existing_model.task != task:
            raise RegistryError(
                f"model {name!r} exists with task {existing_model.task!r}, not {task!r}"
            )
        duplicate = existing_model.versions.filter(sha256=sha256).first()
        if duplicate is not None:
            raise DuplicateVersionError(duplicate)
    key = content_key(sha256, filename)
    newly_stored = store_file(key, path)
    try:
        return _create_version(user, name, task, fmt, key, filename, sha256, size, derived)
    except BaseException:
        # Nothing partial: drop the bytes unless another version already shares them.
        if newly_stored and not ModelVersion.objects.filter(storage_key=key).exists():
            default_storage.delete(key)
        raise


def _create_version(
    user: Any,
    name: str,
    task: str,
    fmt: str,
    key: str,
    filename: str,
    sha256: str,
    size: int,
    derived: dict[str, Any] | None = None,
) -> tuple[ModelVersion, Job]:
    try:
        with transaction.atomic():
            model, _created = RegisteredModel.objects.get_or_create(
                name=name, defaults={"task": task, "created_by": user}
            )
            model = RegisteredModel.objects.select_for_update().get(pk=model.pk)
            number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
            version = ModelVersion.objects.create(
                model=model,
                number=number,
                format=fmt,
                storage_key=key,
                original_filename=Path(filename).name[:255],
                size_bytes=size,
                sha256=sha256,
                created_by=user,
                # A version made from another (a tokenizer attached): parent, recipe,
                # lineage and pipeline, set with the row so it never exists without them.
                **(derived or {}),
            )
            job = Job.objects.create(kind=JobKind.INSPECT, version=version, created_by=user)
            audit(user, "version.upload", version, model=name, sha256=sha256, size=size)
            transaction.on_commit(lambda: _enqueue_inspection(job.pk))
    except IntegrityError as exc:
        duplicate = ModelVersion.objects.filter(model__name=name, sha256=sha256).first()
        if duplicate is not None:
            raise DuplicateVersionError(duplicate) from exc
        raise
    return version, job


def _enqueue_inspection(job_id: int) -> None:
    inspect_version.delay(job_id)


def delete_version(user: Any, version: ModelVersion) -> None:
    """Delete a version and, when no other version shares them, its bytes.

    Raises:
        VersionInUseError: derived versions or running jobs depend on it.
    """
    blockers = version.deletion_blockers()
    if blockers:
        raise VersionInUseError(f"version cannot be deleted: {'; '.join(blockers)}")
    key, model = version.storage_key, version.model
    with transaction.atomic():
        audit(user, "version.delete", version, model=model.name, number=version.number)
        version.delete()
    if not ModelVersion.objects.filter(storage_key=key).exists():
        default_storage.delete(key)


UNMEASURABLE_ROLES = ("echo", "mask")


def set_primary_output(user: Any, version: ModelVersion, output: str) -> ModelVersion:
    """Make `output` the version's primary output (what is measured and served).

    Figures measured on another output stay, marked as such on the comparison page
    until the version is measured again.

    Raises:
        RegistryError: the version is not inspected, the output does not exist, or it
            is an echo of an input or a mask (never measurable).
    """
    outputs = {str(o.get("name")): o for o in (version.inspection or {}).get("outputs") or []}
    if version.status != "ready" or not outputs:
        raise RegistryError("the version has not been inspected yet; wait for it to be ready")
    if output not in outputs:
        raise RegistryError(f"no output named {output!r}; the model has {', '.join(outputs)}")
    role = outputs[output].get("role")
    if role in UNMEASURABLE_ROLES:
        raise RegistryError(
            f"output {output!r} is the {role} of an input; it says nothing about the model"
        )
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        previous = (locked.pipeline or {}).get("output")
        locked.pipeline = {
            **(locked.pipeline or {}),
            "output": output,
            "output_chosen_by": getattr(user, "username", "") or "operator",
        }
        locked.save(update_fields=["pipeline"])
        audit(user, "version.primary_output", locked, output=output, previous=previous)
    return locked
