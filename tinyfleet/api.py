"""The operator REST API (`/api/v1/`): bearer tokens or a browser session, JSON errors
of the form {"error": "..."}, OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError
from ninja.security import HttpBearer
from ninja.security.session import SessionAuth

from accounts.api import router as accounts_router
from accounts.models import ApiToken
from compression.api import router as compression_router
from compression.chains_api import router as chains_router
from compression.sensor_api import router as sensor_router
from core.api_errors import error_response
from fleet.api.bundles_api import router as bundles_router
from fleet.api.device_api import device_api
from fleet.api.devices_api import router as fleet_router
from fleet.api.rollouts_api import router as rollouts_router
from tinyfleet import api_errors


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        found = ApiToken.authenticate(token)
        if found is None:
            return None
        request.user = found.user
        return found.user


class BrowserSession(SessionAuth):
    """The logged-in browser session, CSRF-checked. Requests without a session skip the
    CSRF check so that a missing token is answered 401, not 'CSRF check failed'."""

    def _get_key(self, request: HttpRequest) -> str | None:
        if not getattr(request, "user", None) or not request.user.is_authenticated:
            return None
        return super()._get_key(request)


api = NinjaAPI(
    title="tinyfleet API",
    version="1",
    description=(
        "Operator API. Authenticate with `Authorization: Bearer <token>` "
        '(`python manage.py create_api_token USERNAME`). Errors are `{"error": "..."}`.'
    ),
    urls_namespace="api-v1",
    auth=[BearerToken(), BrowserSession()],
)


def _error(request: HttpRequest, message: str, status: int, **extra: Any) -> HttpResponse:
    return error_response(api, request, message, status, **extra)


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _error(request, str(exc), exc.status_code)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(request, "missing, invalid or revoked API token", 401)


@api.exception_handler(AuthorizationError)
def on_forbidden(request: HttpRequest, exc: AuthorizationError) -> HttpResponse:
    return _error(request, "not allowed", 403)


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, "not found", 404)


@api.exception_handler(ValidationError)
def on_invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    if exc.errors and all(tuple(e.get("loc", ()))[:1] == ("path",) for e in exc.errors):
        # /rollouts/abc or /rollouts/1/explode names no resource: not found, not malformed.
        return _error(request, "not found", 404)
    problems: list[str] = []
    for item in exc.errors:
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "form"))
        problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg")))
    return _error(request, "invalid request: " + "; ".join(problems), 400, details=exc.errors)


api.add_router("", compression_router)
api.add_router("", sensor_router)
api.add_router("", chains_router)
api.add_router("", fleet_router)
api.add_router("", rollouts_router)
api.add_router("", bundles_router)
api.add_router("", accounts_router)


# Every error JSON, range errors 400, statuses documented, on both APIs.
api_errors.install(api)
api_errors.install(device_api)
