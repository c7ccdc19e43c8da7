"""Registry pages. One view renders a page or, for htmx, its fragment; polling
fragments answer 286 once there is nothing left to wait for, which stops htmx."""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Role, has_role
from accounts.permissions import role_required
from compression.chain_views import presets_for
from compression.compare import comparison_row, mark_pareto, recommend
from compression.jobs import cancel_job, create_job
from compression.models import (
    TEXT_TASKS,
    Dataset,
    Job,
    ModelVersion,
    RegisteredModel,
    Task,
    VersionStatus,
)
from compression.recipes import CATALOGUE
from compression.sensor import sensor_rows
from compression.services import (
    RegistryError,
    delete_version,
    register_upload,
    set_primary_output,
)
from compression.uploads import too_large_message, upload_too_large
from core.htmx import is_htmx

HTMX_STOP_POLLING = 286
SORTS = {"name": "name", "-name": "-name", "updated": "-last_upload", "versions": "-n_versions"}


@role_required(Role.VIEWER)
def model_list(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    sort = request.GET.get("sort", "name")
    models = RegisteredModel.objects.annotate(
        n_versions=Count("versions"), last_upload=Max("versions__created_at")
    )
    if query:
        models = models.filter(Q(name__icontains=query) | Q(task__icontains=query))
    models = models.order_by(SORTS.get(sort, "name"))
    page = Paginator(models, 50).get_page(request.GET.get("page"))
    context = {"page": page, "q": query, "sort": sort, "sorts": SORTS}
    template = "compression/_model_rows.html" if is_htmx(request) else "compression/model_list.html"
    return render(request, template, context)


@role_required(Role.VIEWER)
def model_detail(request: HttpRequest, model_id: int) -> HttpResponse:
    model = get_object_or_404(RegisteredModel, pk=model_id)
    versions = model.versions.select_related("parent", "created_by").order_by("number")
    return render(request, "compression/model_detail.html", {"model": model, "versions": versions})


@role_required(Role.VIEWER)
def version_detail(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(
        ModelVersion.objects.select_related("model", "parent", "created_by"), pk=version_id
    )
    recipes = [r for r in CATALOGUE.values() if version.format in r.input_formats]
    advice = (version.inspection or {}).get("recommendation") or {}
    suggested = advice.get("recipe") if "recipe" in advice else None

    def order(info: object) -> tuple[bool, bool]:
        name, recommended = getattr(info, "name", ""), getattr(info, "recommended", False)
        return (name != suggested, not recommended and not advice)

    context = {
        "version": version,
        "advice": advice,
        "recipes": sorted(recipes, key=order),
        "datasets": Dataset.objects.all()[:100],
        "tokenizer_sources": _tokenizer_sources(version),
        "jobs": version.jobs.all()[:20],
        "blockers": version.deletion_blockers(),
        "finished": version.status in (VersionStatus.READY, VersionStatus.FAILED),
        "sensor_rows": sensor_rows(version.metrics),
        "chain_presets": presets_for(version),
    }
    if is_htmx(request):
        response = render(request, "compression/_version_status.html", context)
        if context["finished"]:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "compression/version_detail.html", context)


def _tokenizer_sources(version: ModelVersion) -> list[ModelVersion]:
    """Other ready versions that carry a tokenizer (to take it from), newest first."""
    if version.model.task not in TEXT_TASKS or version.warnings() == []:
        return []
    candidates = ModelVersion.objects.filter(status=VersionStatus.READY).exclude(pk=version.pk)
    found = [
        v
        for v in candidates.select_related("model").order_by("-created_at")[:200]
        if (v.inspection.get("tokenizer") or {}).get("present")
    ]
    return found[:50]


@role_required(Role.OPERATOR)
@require_POST
def version_delete(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=version_id)
    model_id = version.model_id
    try:
        delete_version(request.user, version)
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("version-detail", version_id=version_id)
    messages.success(request, f"Deleted version {version.number}.")
    return redirect("model-detail", model_id=model_id)


@role_required(Role.OPERATOR)
def upload(request: HttpRequest) -> HttpResponse:
    """GET: the drag-and-drop page. POST (XHR with progress, or a plain form): the upload.

    XHR callers get JSON; a plain form post is redirected to the new version's page.
    """
    context = {"tasks": Task.choices, "models": RegisteredModel.objects.order_by("name")}
    if request.method != "POST":
        return render(request, "compression/upload.html", context)
    wants_json = request.headers.get("Accept", "").startswith("application/json")
    status, payload = _handle_upload(request)
    if wants_json:
        return JsonResponse(payload, status=status)
    if status == 201:
        return redirect("version-detail", version_id=payload["version"])
    messages.error(request, str(payload["error"]))
    return render(request, "compression/upload.html", context, status=status)


def _handle_upload(request: HttpRequest) -> tuple[int, dict[str, object]]:
    if upload_too_large(request):
        return 413, {"error": too_large_message()}
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return 400, {"error": "choose a model file to upload"}
    try:
        version, job = register_upload(
            user=request.user,
            name=request.POST.get("name", ""),
            task=request.POST.get("task", ""),
            path=Path(uploaded.temporary_file_path()),  # type: ignore[attr-defined]
            filename=uploaded.name or "upload",
            sha256=uploaded.sha256,  # type: ignore[attr-defined]
            size=uploaded.size or 0,
        )
    except RegistryError as exc:
        payload: dict[str, object] = {"error": str(exc)}
        if hasattr(exc, "existing"):
            payload["version"] = exc.existing.pk
            payload["url"] = f"/versions/{exc.existing.pk}/"
        return exc.status, payload
    finally:
        uploaded.close()
    return 201, {"version": version.pk, "job": job.pk, "url": f"/versions/{version.pk}/"}


@role_required(Role.VIEWER)
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.select_related("version__model", "created_by")[:200]
    active = any(not job.is_finished for job in jobs)
    if is_htmx(request):
        response = render(request, "compression/_job_rows.html", {"jobs": jobs})
        if not active:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "compression/job_list.html", {"jobs": jobs, "active": active})


@role_required(Role.VIEWER)
def job_detail(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(
        Job.objects.select_related("version__model", "result_version", "created_by"), pk=job_id
    )
    context = {"job": job, "log_tail": job.log[-6000:], "training": _training_line(job)}
    if is_htmx(request):
        response = render(request, "compression/_job_progress.html", context)
        if job.is_finished:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "compression/job_detail.html", context)


def _training_line(job: Job) -> str:
    """The newest 'step n/N, loss, held-out fidelity, ETA' line of a training job."""
    if job.stage != "training":
        return ""
    lines = [line for line in job.log.splitlines() if " step " in f" {line[9:]}"]
    return lines[-1][9:] if lines else ""


@role_required(Role.OPERATOR)
@require_POST
def job_start(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        params = json.loads(request.POST.get("params") or "{}")
    except json.JSONDecodeError as exc:
        messages.error(request, f"Parameters are not valid JSON: {exc}")
        return redirect("version-detail", version_id=version_id)

    def dataset_id(field: str) -> int | None:
        raw = request.POST.get(field, "")
        return int(raw) if raw.isdigit() else None

    try:
        job = create_job(
            user=request.user,
            version=version,
            recipe=request.POST.get("recipe", ""),
            params=params,
            eval_dataset=dataset_id("eval_dataset"),
            calibration_dataset=dataset_id("calibration_dataset"),
        )
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("version-detail", version_id=version_id)
    return redirect("job-detail", job_id=job.pk)


@role_required(Role.OPERATOR)
@require_POST
def version_primary_output(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
    try:
        set_primary_output(request.user, version, request.POST.get("output", ""))
    except RegistryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request, "Primary output changed. Measure the variants again to compare on it."
        )
    return redirect("version-detail", version_id=version_id)


@role_required(Role.OPERATOR)
@require_POST
def version_tokenizer(request: HttpRequest, version_id: int) -> HttpResponse:
    """Attach uploaded tokenizer files, or another version's tokenizer: a new version."""
    from compression.tokenizer_attach import attach_tokenizer

    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
    raw = request.POST.get("from_version", "")
    source = get_object_or_404(ModelVersion, pk=int(raw)) if raw.isdigit() else None
    files = {
        Path(f.name or "").name: Path(f.temporary_file_path())  # type: ignore[attr-defined]
        for f in request.FILES.getlist("files")
    }
    try:
        created, _job = attach_tokenizer(request.user, version, files=files, source=source)
    except (RegistryError, AttributeError) as exc:
        messages.error(request, str(exc) if isinstance(exc, RegistryError) else "upload failed")
        return redirect("version-detail", version_id=version_id)
    messages.success(request, f"Tokenizer attached: {created} is being inspected.")
    return redirect("version-detail", version_id=created.pk)


@role_required(Role.OPERATOR)
@require_POST
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(Job, pk=job_id)
    try:
        cancel_job(request.user, job)
    except RegistryError as exc:
        messages.error(request, str(exc))
    return redirect("job-detail", job_id=job_id)


@role_required(Role.VIEWER)
def dataset_list(request: HttpRequest) -> HttpResponse:
    """Evaluation and calibration datasets; operators upload new ones here."""
    if request.method == "POST":
        return _dataset_upload(request)
    return render(request, "compression/dataset_list.html", {"datasets": Dataset.objects.all()})


def _dataset_upload(request: HttpRequest) -> HttpResponse:
    from compression.jobs import register_dataset

    if not has_role(request.user, Role.OPERATOR):
        return HttpResponse("Uploading datasets needs the operator role.", status=403)
    uploaded = request.FILES.get("file")
    if uploaded is None:
        messages.error(request, "Choose a .jsonl or .npz file to upload.")
        return redirect("datasets")
    try:
        dataset = register_dataset(
            user=request.user,
            name=request.POST.get("name", ""),
            path=Path(uploaded.temporary_file_path()),  # type: ignore[attr-defined]
            filename=uploaded.name or "dataset",
            size=uploaded.size or 0,
        )
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("datasets")
    return redirect("dataset-detail", dataset_id=dataset.pk)


@role_required(Role.VIEWER)
def dataset_detail(request: HttpRequest, dataset_id: int) -> HttpResponse:
    from compression.pipeline.textdata import DatasetError, preview_dataset
    from compression.storage import local_copy

    dataset = get_object_or_404(Dataset, pk=dataset_id)
    try:
        with local_copy(dataset.storage_key) as path:
            preview = preview_dataset(path, dataset.kind)
    except (DatasetError, OSError) as exc:
        preview = {"error": str(exc)}
    return render(
        request, "compression/dataset_detail.html", {"dataset": dataset, "preview": preview}
    )


@role_required(Role.VIEWER)
def model_compare(request: HttpRequest, model_id: int) -> HttpResponse:
    """All ready variants side by side, with the recommended one marked."""
    model = get_object_or_404(RegisteredModel, pk=model_id)
    versions = list(
        model.versions.filter(status=VersionStatus.READY)
        .select_related("parent")
        .order_by("number")
    )
    rows = [comparison_row(v) for v in versions]
    mark_pareto(rows)
    recommended = recommend(rows)
    for row in rows:
        row["recommended"] = row["id"] == recommended
    return render(
        request,
        "compression/compare.html",
        {
            "model": model,
            "rows": rows,
            "chart_data": rows,
        },
    )
