"""Rate limits for the two APIs, counted with django-ratelimit in the Django cache (Redis
in production, a file cache in the data dir on the embedded default), so every web
worker and process shares one count.

- `/api/v1/`: per credential (bearer token, else browser session, else client address),
  TINYFLEET_API_RATE_LIMIT (default 600/m);
- `/api/device/v1/`: per device credential, TINYFLEET_DEVICE_RATE_LIMIT (default 240/m);
  enrollment per client address, TINYFLEET_ENROLL_RATE_LIMIT (default 30/m).

Unchanged desired-state polls are answered by fleet.state.DeviceStateFastPath before
this middleware (one query, no cache round trip); every other device call counts. Over
the limit: 429 with Retry-After (the agent treats 429 as transient and retries later).
Logins are limited separately by django-axes (settings: AXES_*).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django_ratelimit.core import get_usage

ENROLL_PATH = "/api/device/v1/enroll"


def _client_address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", ""))


def _credential_key(group: str, request: HttpRequest) -> str:
    """Who is calling: a digest of the bearer credential, the session, or the address."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        return hashlib.sha256(header.encode()).hexdigest()
    session = request.COOKIES.get(settings.SESSION_COOKIE_NAME, "")
    if session:
        return "session:" + hashlib.sha256(session.encode()).hexdigest()
    return "addr:" + _client_address(request)


def _address_key(group: str, request: HttpRequest) -> str:
    return _client_address(request)


def _rule(path: str) -> tuple[str, str | None, Callable[[str, HttpRequest], str]] | None:
    """(group, rate, key) for an API path, or None outside the APIs."""
    if path == ENROLL_PATH:
        return "device-enroll", settings.ENROLL_RATE_LIMIT, _address_key
    if path.startswith("/api/device/v1/"):
        return "device-api", settings.DEVICE_RATE_LIMIT, _credential_key
    if path.startswith("/api/v1/"):
        return "operator-api", settings.API_RATE_LIMIT, _credential_key
    return None


class ApiRateLimit:
    """Middleware: 429 once a caller exceeds its API rate."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rule = _rule(request.path_info)
        if rule is not None and rule[1]:
            group, rate, key = rule
            usage = get_usage(request, group=group, key=key, rate=rate, increment=True)
            if usage is not None and usage["should_limit"]:
                wait = max(1, int(usage["time_left"]))
                response = JsonResponse(
                    {"error": f"too many requests: at most {rate}; retry in {wait} s"},
                    status=429,
                )
                response["Retry-After"] = str(wait)
                return response
        return self.get_response(request)
