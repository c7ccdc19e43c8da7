"""Role checks: `role_required` for pages, `require_role` for API operations."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from ninja.errors import HttpError

from accounts.models import has_role

View = Callable[..., HttpResponse]


def role_required(role: str) -> Callable[[View], View]:
    """Anonymous users go to the login page; logged-in users without the role get 403."""

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def require_role(request: HttpRequest, role: str) -> None:
    """Raises HttpError(403) unless the caller has at least `role`."""
    if not has_role(request.user, role):
        raise HttpError(403, f"this needs the {role} role")


def signed_in_user(request: HttpRequest) -> User:
    """The user of a request that a role check already let through (never anonymous)."""
    user = request.user
    if not isinstance(user, User):  # the role check turns anonymous callers away first
        raise PermissionDenied("this needs a signed-in user")
    return user
