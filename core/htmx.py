"""htmx requests, as django-htmx's middleware marks them (`request.htmx`)."""

from __future__ import annotations

from django.http import HttpRequest


def is_htmx(request: HttpRequest) -> bool:
    """Whether the request came from htmx (the middleware sets `request.htmx`, which
    HttpRequest's type does not declare)."""
    return bool(getattr(request, "htmx", False))
