"""The sensor page: upload training (and test) windows and train a sensor model.

A plain multipart form (works without JavaScript): the files become sensor datasets,
the training job starts, and the browser lands on the job's progress page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.models import Role
from accounts.permissions import role_required
from compression.jobs import register_dataset
from compression.models import Dataset, DatasetKind, Job, RegisteredModel, Task
from compression.recipes import CATALOGUE
from compression.sensor import SENSOR_RECIPE, start_training
from compression.services import RegistryError
from compression.uploads import too_large_message, upload_too_large


def _context() -> dict[str, Any]:
    return {
        "datasets": Dataset.objects.filter(kind=DatasetKind.SENSOR)[:100],
        "models": RegisteredModel.objects.filter(
            task__in=(Task.SENSOR_CLASSIFICATION, Task.SENSOR_ANOMALY)
        ).prefetch_related("versions")[:100],
        "jobs": Job.objects.filter(recipe=SENSOR_RECIPE).select_related("version__model")[:20],
        "default_params": CATALOGUE[SENSOR_RECIPE].form_params,
    }


def _drop_unreferenced(keys: list[str]) -> None:
    """After a rolled-back request: delete stored files no dataset row points at."""
    for key in keys:
        if not Dataset.objects.filter(storage_key=key).exists():
            default_storage.delete(key)


def _dataset(request: HttpRequest, field: str, existing: str, stored: list[str]) -> int | None:
    """The uploaded file (registered now) or the chosen existing dataset."""
    uploaded: UploadedFile | None = request.FILES.get(field)
    if uploaded is not None:
        try:
            dataset = register_dataset(
                user=request.user,
                name="",
                path=Path(uploaded.temporary_file_path()),  # type: ignore[attr-defined]
                filename=uploaded.name or field,
                size=uploaded.size or 0,
                kind=DatasetKind.SENSOR,
            )
        finally:
            uploaded.close()
        stored.append(dataset.storage_key)
        return dataset.pk
    raw = request.POST.get(existing, "")
    return int(raw) if raw.isdigit() else None


@role_required(Role.OPERATOR)
def sensor_models(request: HttpRequest) -> HttpResponse:
    """GET: the form and recent sensor jobs. POST: register the data and start training."""
    if request.method != "POST":
        return render(request, "compression/sensors.html", _context())
    if upload_too_large(request):
        messages.error(request, too_large_message())
        return render(request, "compression/sensors.html", _context(), status=413)
    stored: list[str] = []
    try:
        params = json.loads(request.POST.get("params") or "{}")
        if not isinstance(params, dict):
            raise RegistryError("parameters must be a JSON object")
        # All or nothing: a refused training request keeps no half-registered data.
        with transaction.atomic():
            train = _dataset(request, "train_file", "dataset", stored)
            test = _dataset(request, "test_file", "eval_dataset", stored)
            _, job = start_training(
                user=request.user,
                name=request.POST.get("name", ""),
                dataset=train,
                eval_dataset=test,
                params=params,
            )
    except json.JSONDecodeError as exc:
        messages.error(request, f"Parameters are not valid JSON: {exc}")
        return render(request, "compression/sensors.html", _context(), status=400)
    except RegistryError as exc:
        _drop_unreferenced(stored)
        messages.error(request, str(exc))
        return render(request, "compression/sensors.html", _context(), status=exc.status)
    return redirect("job-detail", job_id=job.pk)
