"""Chain pages: start a saved pipeline from a version, follow its path with the numbers
measured at each step. The detail view renders the page or, for htmx, its fragment."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Role
from accounts.permissions import role_required
from compression.chains import (
    PRESETS,
    cancel_chain,
    chain_status,
    start_chain,
    step_numbers,
    step_views,
)
from compression.models import Chain, ModelVersion
from compression.recipes import CATALOGUE
from compression.services import RegistryError
from core.htmx import is_htmx

HTMX_STOP_POLLING = 286


def presets_for(version: ModelVersion) -> list[dict[str, str]]:
    """The presets whose first step applies to this version, steps as JSON for the form."""
    out = []
    for key, preset in PRESETS.items():
        first = CATALOGUE.get(preset["steps"][0]["recipe"])
        if first is not None and version.format in first.input_formats:
            out.append({"key": key, "title": preset["title"], "steps": json.dumps(preset["steps"])})
    return out


@role_required(Role.OPERATOR)
@require_POST
def chain_start(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=version_id)
    raw = request.POST.get("steps", "").strip()
    if not raw and request.POST.get("preset") in PRESETS:
        raw = json.dumps(PRESETS[request.POST["preset"]]["steps"])
    try:
        steps = json.loads(raw or "[]")
    except json.JSONDecodeError as exc:
        messages.error(request, f"Steps are not valid JSON: {exc}")
        return redirect("version-detail", version_id=version_id)

    def dataset_id(field: str) -> int | None:
        value = request.POST.get(field, "")
        return int(value) if value.isdigit() else None

    try:
        chain = start_chain(
            user=request.user,
            source=version,
            steps=steps,
            name=request.POST.get("name", ""),
            calibration_dataset=dataset_id("calibration_dataset"),
            eval_dataset=dataset_id("eval_dataset"),
        )
    except RegistryError as exc:
        messages.error(request, str(exc))
        return redirect("version-detail", version_id=version_id)
    return redirect("chain-detail", chain_id=chain.pk)


@role_required(Role.VIEWER)
def chain_list(request: HttpRequest) -> HttpResponse:
    chains = list(Chain.objects.select_related("source__model")[:100])
    rows = [(c, chain_status(c)[0]) for c in chains]
    return render(request, "compression/chain_list.html", {"rows": rows})


@role_required(Role.VIEWER)
def chain_detail(request: HttpRequest, chain_id: int) -> HttpResponse:
    chain = get_object_or_404(Chain.objects.select_related("source__model"), pk=chain_id)
    steps = step_views(chain)
    status, error = chain_status(chain, steps)
    context = {
        "chain": chain,
        "status": status,
        "error": error,
        "steps": [(s, step_numbers(s)) for s in steps],
        "finished": status in ("succeeded", "failed", "cancelled"),
    }
    if is_htmx(request):
        response = render(request, "compression/_chain_steps.html", context)
        if context["finished"]:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "compression/chain_detail.html", context)


@role_required(Role.OPERATOR)
@require_POST
def chain_cancel(request: HttpRequest, chain_id: int) -> HttpResponse:
    chain = get_object_or_404(Chain, pk=chain_id)
    try:
        cancel_chain(request.user, chain)
    except RegistryError as exc:
        messages.error(request, str(exc))
    return redirect("chain-detail", chain_id=chain_id)
