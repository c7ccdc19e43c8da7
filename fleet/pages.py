"""Fleet pages: overview, devices, groups and enrollment, rollouts, in-field monitoring."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import ApiToken, Role, audit, has_role
from accounts.permissions import role_required, signed_in_user
from core.htmx import is_htmx
from fleet.devices.fallback import FallbackUrlError, set_group_fallback
from fleet.models import Bundle, Device, DeviceEvent, EnrollmentToken, Group, Rollout
from fleet.models.devices import SelectorError, parse_selector
from fleet.models.rollouts import DEFAULT_SOAK_SECONDS
from fleet.presenters import device_json, enroll_command, server_url
from fleet.rollouts import engine as rollouts
from fleet.rollouts import rollout_plan
from fleet.security import director
from fleet.telemetry import drift, monitoring

HTMX_STOP_POLLING = 286


@role_required(Role.VIEWER)
def overview(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "fleet/overview.html",
        {
            "numbers": monitoring.overview(),
            "rollouts": Rollout.objects.filter(status__in=("running", "paused")).select_related(
                "bundle", "group"
            ),
        },
    )


@role_required(Role.VIEWER)
def device_list(request: HttpRequest) -> HttpResponse:
    devices = list(Device.objects.all())
    status = request.GET.get("status", "")
    if status:
        devices = [d for d in devices if d.status == status]
    group_id = request.GET.get("group", "")
    if group_id.isdigit():
        members = set(get_object_or_404(Group, pk=group_id).members().values_list("pk", flat=True))
        devices = [d for d in devices if d.pk in members]
    return render(
        request,
        "fleet/device_list.html",
        {
            "devices": devices,
            "groups": Group.objects.all(),
            "status": status,
            "group_id": group_id,
        },
    )


@role_required(Role.VIEWER)
def device_detail(request: HttpRequest, device_id: str) -> HttpResponse:
    device = get_object_or_404(Device, pk=device_id)
    return render(
        request,
        "fleet/device_detail.html",
        {
            "device": device,
            "info": device_json(device),
            "events": DeviceEvent.objects.filter(device=device)[:50],
            "variants": rollout_plan.device_variants(device),
            "days": monitoring.device_series(device),
        },
    )


@role_required(Role.OPERATOR)
@require_POST
def device_revoke(request: HttpRequest, device_id: str) -> HttpResponse:
    from django.utils import timezone

    device = get_object_or_404(Device, pk=device_id)
    if device.revoked_at is None:
        device.revoked_at = timezone.now()
        device.save(update_fields=["revoked_at"])
        director.unassign(device)
        audit(request.user, "device.revoke", device)
        messages.success(request, f"Revoked {device.name}; it is locked out on its next request.")
    return redirect("device-detail", device_id=device.pk)


@role_required(Role.VIEWER)
def group_list(request: HttpRequest) -> HttpResponse:
    new_command = None
    if request.method == "POST":
        if not has_role(request.user, Role.OPERATOR):
            return HttpResponse("This needs the operator role.", status=403)
        new_command = _group_post(request)
    groups = [(g, g.members().count()) for g in Group.objects.all()]
    return render(request, "fleet/groups.html", {"groups": groups, "new_command": new_command})


def _group_post(request: HttpRequest) -> str | None:
    if request.POST.get("action") == "fallback":
        _fallback_post(request)
        return None
    if request.POST.get("action") == "token":
        group = get_object_or_404(Group, pk=request.POST.get("group"))
        token, raw = EnrollmentToken.issue(group, user=request.user, ttl=timedelta(hours=24))
        audit(request.user, "enrollment-token.create", token, group=group.name)
        return enroll_command(raw, server_url(request))
    name, selector = request.POST.get("name", "").strip(), request.POST.get("selector", "").strip()
    try:
        parse_selector(selector)
    except SelectorError as exc:
        messages.error(request, str(exc))
        return None
    if not name or Group.objects.filter(name=name).exists():
        messages.error(request, "Give the group a new, non-empty name.")
        return None
    group = Group.objects.create(
        name=name[:100], selector=selector, created_by=signed_in_user(request)
    )
    audit(request.user, "group.create", group, selector=selector)
    messages.success(request, f"Created group {name}.")
    return None


def _fallback_post(request: HttpRequest) -> None:
    group = get_object_or_404(Group, pk=request.POST.get("group"))
    enabled = request.POST.get("enabled") == "on"
    try:
        set_group_fallback(
            group, enabled=enabled, url=request.POST.get("url", ""), actor=request.user
        )
    except FallbackUrlError as exc:
        messages.error(request, f"Fallback for {group.name} not changed: {exc}")
        return
    state = f"on ({group.fallback_url})" if enabled else "off"
    messages.success(request, f"Low-confidence fallback for {group.name} is {state}.")


@role_required(Role.VIEWER)
def rollout_list(request: HttpRequest, preview: dict[str, object] | None = None) -> HttpResponse:
    return render(
        request,
        "fleet/rollout_list.html",
        {
            "rollouts": Rollout.objects.select_related("bundle", "group")[:200],
            "bundles": Bundle.objects.filter(status="published")[:200],
            "groups": Group.objects.all(),
            "preview": preview,
        },
    )


@role_required(Role.VIEWER)
def rollout_preview(request: HttpRequest) -> HttpResponse:
    """Which devices of the group each chosen variant would serve, before starting: the
    form's fragment under htmx, the rollouts page with the preview otherwise."""
    ids = [request.GET.get("bundle", ""), *request.GET.getlist("variants")]
    found = Bundle.objects.in_bulk([i for i in ids if i])
    group = Group.objects.filter(pk=request.GET.get("group", "0") or 0).first()
    preview: dict[str, object] = {"error": "Pick a group and at least one bundle."}
    if group is not None and ids[0] in found:
        bundles = [found[i] for i in ids if i in found]
        try:
            rollout_plan.check_variants(bundles)
            preview = rollout_plan.preview(group, bundles)
        except rollout_plan.VariantError as exc:
            preview = {"error": str(exc)}
    if is_htmx(request):
        return render(request, "fleet/_rollout_preview.html", {"preview": preview})
    return rollout_list(request, preview)


@role_required(Role.OPERATOR)
@require_POST
def rollout_create(request: HttpRequest) -> HttpResponse:
    bundle = get_object_or_404(Bundle, pk=request.POST.get("bundle", ""))
    group = get_object_or_404(Group, pk=request.POST.get("group", "0") or 0)
    extra = request.POST.getlist("variants")
    found = Bundle.objects.in_bulk(extra)
    if len(found) != len(set(extra)):
        messages.error(request, "A chosen variant does not exist.")
        return redirect("rollouts")
    try:
        waves = [int(w) for w in request.POST.get("waves", "10,50,100").split(",") if w.strip()]
        soak = int(request.POST.get("soak_seconds", str(DEFAULT_SOAK_SECONDS)))
        gates = {"on_failure": request.POST.get("on_failure", "rollback")}
        rollout = rollouts.create(
            user=request.user,
            bundle=bundle,
            group=group,
            waves=waves,
            gates=gates,
            soak_seconds=soak,
            variants=[found[i] for i in extra],
        )
    except ValueError as exc:
        messages.error(request, f"Waves and soak time must be whole numbers ({exc}).")
        return redirect("rollouts")
    except rollouts.RolloutError as exc:
        messages.error(request, str(exc))
        return redirect("rollouts")
    return redirect("rollout-detail", rollout_id=rollout.pk)


@role_required(Role.VIEWER)
def rollout_detail(request: HttpRequest, rollout_id: int) -> HttpResponse:
    rollout = get_object_or_404(Rollout.objects.select_related("bundle", "group"), pk=rollout_id)
    plan = rollouts.group_plan(rollout) if rollout.is_active else rollout_plan.Plan()
    wave = rollouts.wave_of(rollout, plan)
    bundles = rollout_plan.variant_bundles(rollout)
    context = {
        "rollout": rollout,
        "events": rollout.events.all()[:50],
        "wave_devices": [device for device, _ in wave],
        "gates": rollout.last_evaluation.get("gates", []),
        "waiting_for": rollouts.waiting_for(rollout),
        "variants": rollout_plan.variant_progress(
            bundles, wave, rollout.started_at or rollout.created_at
        ),
        "incompatible": plan.incompatible,
    }
    if is_htmx(request):
        response = render(request, "fleet/_rollout_status.html", context)
        if not rollout.is_active:
            response.status_code = HTMX_STOP_POLLING
        return response
    return render(request, "fleet/rollout_detail.html", context)


@role_required(Role.OPERATOR)
@require_POST
def rollout_action(request: HttpRequest, rollout_id: int, action: str) -> HttpResponse:
    rollout = get_object_or_404(Rollout, pk=rollout_id)
    reason = request.POST.get("reason", "")[:500]
    handlers = {
        "pause": lambda: rollouts.pause(rollout, request.user, reason),
        "resume": lambda: rollouts.resume(rollout, request.user),
        "promote": lambda: rollouts.promote(rollout, request.user, reason or "promoted by hand"),
        "rollback": lambda: rollouts.rollback(
            rollout, request.user, reason or "rolled back by hand"
        ),
        "cancel": lambda: rollouts.cancel(rollout, request.user),
    }
    if action not in handlers:
        return HttpResponse("Unknown action.", status=404)
    try:
        handlers[action]()
        messages.success(request, f"Rollout {action} done.")
    except rollouts.RolloutError as exc:
        messages.error(request, str(exc))
    return redirect("rollout-detail", rollout_id=rollout_id)


@role_required(Role.VIEWER)
def bundle_monitor(request: HttpRequest, bundle_id: str) -> HttpResponse:
    bundle = get_object_or_404(Bundle.objects.select_related("version__model"), pk=bundle_id)
    hours = int(request.GET.get("hours", "24")) if request.GET.get("hours", "").isdigit() else 24
    hours = min(max(hours, 1), 720)
    reference = drift.reference_for_bundle(bundle.pk)
    return render(
        request,
        "fleet/monitor.html",
        {
            "bundle": bundle,
            "series": monitoring.bundle_series(bundle.pk, hours, reference=reference),
            "per_group": monitoring.group_breakdown(bundle.pk, hours, reference=reference),
            "drift": monitoring.drift_summary(bundle.pk, hours),
            "hours": hours,
        },
    )


def prometheus(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint; needs a viewer session or API token."""
    user: Any = request.user
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = ApiToken.authenticate(header[7:].strip())
        user = token.user if token else None
    if not has_role(user, Role.VIEWER):
        return HttpResponse("authentication required\n", status=401, content_type="text/plain")
    return HttpResponse(
        monitoring.prometheus_text(), content_type="text/plain; version=0.0.4; charset=utf-8"
    )
