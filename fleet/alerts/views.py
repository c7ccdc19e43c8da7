"""The alerts page: channels (with a test message), rules and thresholds, open and
recent alerts, and the delivery log. Every change is audit-logged."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from accounts.models import Role, audit, has_role
from accounts.permissions import role_required, signed_in_user
from fleet.alerts import engine, tasks
from fleet.alerts.models import Alert, Channel, ChannelKind, Delivery, Rule

_url = URLValidator(schemes=["http", "https"])


class ChannelInputError(ValueError):
    """The channel form is not valid; the message says why."""


@role_required(Role.VIEWER)
def alerts_page(request: HttpRequest) -> HttpResponse:
    new_secret = None
    if request.method == "POST":
        if not has_role(request.user, Role.OPERATOR):
            return HttpResponse("This needs the operator role.", status=403)
        result = _post(request)
        if isinstance(result, HttpResponse):
            return result
        new_secret = result
    rules = engine.ensure_rules()
    return render(
        request,
        "alerts/alerts.html",
        {
            "channels": Channel.objects.all(),
            "rules": [(r, {c.pk for c in r.channels.all()}) for r in rules],
            "open_alerts": Alert.objects.filter(resolved_at__isnull=True).select_related("rule"),
            "recent": Alert.objects.filter(resolved_at__isnull=False).select_related("rule")[:20],
            "deliveries": Delivery.objects.select_related("channel", "alert")[:50],
            "kinds": ChannelKind.choices,
            "new_secret": new_secret,
        },
    )


def _post(request: HttpRequest) -> str | HttpResponse | None:
    action = request.POST.get("action", "")
    if action == "channel-create":
        try:
            return _create_channel(request)
        except ChannelInputError as exc:
            messages.error(request, f"Channel not added: {exc}")
            return None
    if action == "rule-save":
        _save_rule(request)
        return redirect("alerts")
    channel = get_object_or_404(Channel, pk=request.POST.get("channel", "0") or 0)
    if action == "channel-test":
        delivery = engine.test_delivery(channel)
        transaction.on_commit(lambda: tasks.queue_delivery(delivery.pk))
        audit(request.user, "alert-channel.test", channel, delivery=delivery.pk)
        messages.success(
            request, f"Test message queued to {channel.name}; its outcome shows in the log below."
        )
    elif action == "channel-toggle":
        channel.enabled = not channel.enabled
        channel.save(update_fields=["enabled"])
        audit(request.user, "alert-channel.update", channel, enabled=channel.enabled)
        messages.success(request, f"{channel.name} {'enabled' if channel.enabled else 'disabled'}.")
    elif action == "channel-rotate" and channel.kind == ChannelKind.WEBHOOK:
        secret = channel.new_secret()
        audit(request.user, "alert-channel.rotate-secret", channel)
        messages.success(request, f"New signing secret for {channel.name} (shown once below).")
        return secret
    elif action == "channel-delete":
        audit(request.user, "alert-channel.delete", channel, name=channel.name)
        channel.delete()
        messages.success(request, f"Deleted channel {channel.name}.")
    return redirect("alerts")


def _create_channel(request: HttpRequest) -> str | None:
    name = request.POST.get("name", "").strip()[:100]
    kind = request.POST.get("kind", "")
    if not name:
        raise ChannelInputError("give it a name")
    if Channel.objects.filter(name=name).exists():
        raise ChannelInputError(f"a channel named {name!r} exists")
    if kind == ChannelKind.WEBHOOK:
        url = request.POST.get("url", "").strip()
        try:
            _url(url)
        except ValidationError as exc:
            raise ChannelInputError("the webhook URL must be an http:// or https:// URL") from exc
        with transaction.atomic():
            channel = Channel.objects.create(
                name=name, kind=kind, url=url, created_by=signed_in_user(request)
            )
            secret = channel.new_secret()
            audit(request.user, "alert-channel.create", channel, kind=kind, url=url)
        messages.success(request, f"Added webhook {name}. Its signing secret is shown once below.")
        return secret
    if kind == ChannelKind.EMAIL:
        recipients = [r.strip() for r in request.POST.get("recipients", "").split(",") if r.strip()]
        if not recipients:
            raise ChannelInputError("list at least one e-mail address")
        for address in recipients:
            try:
                validate_email(address)
            except ValidationError as exc:
                raise ChannelInputError(f"{address!r} is not an e-mail address") from exc
        channel = Channel.objects.create(
            name=name,
            kind=kind,
            recipients=", ".join(recipients),
            created_by=signed_in_user(request),
        )
        audit(request.user, "alert-channel.create", channel, kind=kind, recipients=recipients)
        messages.success(request, f"Added e-mail channel {name}.")
        return None
    raise ChannelInputError("choose webhook or e-mail")


def _save_rule(request: HttpRequest) -> None:
    rule = get_object_or_404(Rule, pk=request.POST.get("rule", "0") or 0)
    enabled = request.POST.get("enabled") == "on"
    threshold = rule.threshold
    raw = request.POST.get("threshold", "").strip()
    if rule.threshold_unit and raw:
        try:
            threshold = float(raw)
        except ValueError:
            messages.error(request, f"{rule}: the threshold must be a number, not {raw!r}.")
            return
        if threshold < 0:
            messages.error(request, f"{rule}: the threshold must not be negative.")
            return
    chosen = Channel.objects.filter(
        pk__in=[c for c in request.POST.getlist("channels") if c.isdigit()]
    )
    with transaction.atomic():
        rule.enabled, rule.threshold = enabled, threshold
        rule.save(update_fields=["enabled", "threshold"])
        rule.channels.set(chosen)
        audit(
            request.user,
            "alert-rule.update",
            rule,
            kind=rule.kind,
            enabled=enabled,
            threshold=threshold,
            channels=sorted(c.name for c in chosen),
        )
    messages.success(request, f"Saved rule “{rule}”.")
