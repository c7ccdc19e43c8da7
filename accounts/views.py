"""Token management and audit log pages."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.models import ApiToken, AuditEvent, Role, audit, has_role
from accounts.permissions import role_required


@role_required(Role.VIEWER)
def token_list(request: HttpRequest) -> HttpResponse:
    new_token = None
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        if not name or len(name) > 100:
            messages.error(request, "Give the token a name of 1-100 characters.")
        else:
            token, new_token = ApiToken.issue(request.user, name)
            audit(request.user, "token.create", token, name=name)
    tokens = ApiToken.objects.visible_to(request.user).select_related("user")
    return render(request, "accounts/tokens.html", {"tokens": tokens, "new_token": new_token})


@role_required(Role.VIEWER)
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.select_related("user"), pk=token_id)
    if token.user_id != request.user.pk and not has_role(request.user, Role.ADMIN):
        return HttpResponse("You can only revoke your own tokens.", status=403)
    token.revoke()
    audit(request.user, "token.revoke", token, owner=token.user.get_username())
    messages.success(request, f"Revoked token {token.name!r}.")
    return redirect("tokens")


@role_required(Role.ADMIN)
def audit_log(request: HttpRequest) -> HttpResponse:
    events = AuditEvent.objects.select_related("actor")[:500]
    return render(request, "accounts/audit.html", {"events": events})
