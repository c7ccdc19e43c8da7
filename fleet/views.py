"""Bundle and security pages. The bundle page polls itself with htmx while publishing
(`hx-select` keeps the swap to the status block) and answers 286 once it is done."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import Role
from accounts.permissions import role_required
from compression.models import ModelVersion
from core.htmx import is_htmx
from fleet.models import Bundle, BundleStatus
from fleet.security.publish import PublishError, request_publish, signed_target
from fleet.security.report import status_report

HTMX_STOP_POLLING = 286


@role_required(Role.VIEWER)
def bundle_list(request: HttpRequest) -> HttpResponse:
    bundles = Bundle.objects.select_related("version__model", "created_by")
    status = request.GET.get("status", "")
    if status in BundleStatus.values:
        bundles = bundles.filter(status=status)
    page = Paginator(bundles, 50).get_page(request.GET.get("page"))
    context = {"page": page, "status": status, "statuses": BundleStatus.values}
    return render(request, "fleet/bundle_list.html", context)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) if value else ""


@role_required(Role.VIEWER)
def bundle_detail(request: HttpRequest, bundle_id: str) -> HttpResponse:
    bundle = get_object_or_404(
        Bundle.objects.select_related("version__model", "created_by"), pk=bundle_id
    )
    signed = signed_target(bundle)
    context = {
        "bundle": bundle,
        "signed": signed,
        "record_json": _pretty(bundle.record),
        "target_json": _pretty(signed["target"] if signed else None),
        "assigned": bundle.assignments.filter(ended_at__isnull=True).count(),
        "polling": bundle.status == BundleStatus.PUBLISHING,
    }
    response = render(request, "fleet/bundle_detail.html", context)
    if is_htmx(request) and not context["polling"]:
        response.status_code = HTMX_STOP_POLLING
    return response


@require_POST
@role_required(Role.OPERATOR)
def version_publish(request: HttpRequest, version_id: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion.objects.select_related("model"), pk=version_id)
    try:
        bundle, created = request_publish(version, request.user)
    except PublishError as exc:
        messages.error(request, str(exc))
        return redirect("version-detail", version_id=version_id)
    if created:
        messages.success(request, f"Publishing {version} as bundle {bundle.pk}.")
    else:
        messages.info(request, f"{version} is already bundle {bundle.pk}.")
    return redirect("bundle-detail", bundle_id=bundle.pk)


@role_required(Role.OPERATOR)
def security(request: HttpRequest) -> HttpResponse:
    return render(request, "fleet/security.html", {"report": status_report()})
