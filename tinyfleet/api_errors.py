"""Every error of the two APIs (`/api/v1/`, `/api/device/v1/`) is JSON with a 4xx status
that says what was wrong, and the OpenAPI documents every status a route can return.

Three layers, each catching what the one before cannot:
- exception handlers on both NinjaAPI instances turn database range errors, oversized
  bodies and malformed ids into 400/413 instead of a 500;
- `JsonApiErrors`, a middleware, rewrites any remaining non-JSON error under `/api/`
  (Django's 404 for an unknown path, a 405 for a wrong method, a CSRF 403, a last-resort
  500) into `{"error": "..."}` with the same status;
- `document_errors` adds the statuses every operation can return (400 invalid input,
  401 credential, 403 role or CSRF, 404 unknown object, 429 rate limit) to the schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["error"],
}
_STANDARD = {
    "400": "Invalid input: a parameter or the body is malformed or out of range",
    "401": "Missing, unknown or revoked credential",
    "403": "The credential's role may not do this (or the browser session failed CSRF)",
    "404": "No such object",
    "429": "Too many requests: slow down (see Retry-After)",
}
_SAFE_METHODS = {"get", "head", "options"}


def install(api: NinjaAPI) -> None:
    """Add the JSON exception handlers and the documented error statuses to `api`."""

    def reply(request: HttpRequest, message: str, status: int) -> HttpResponse:
        return api.create_response(request, {"error": message}, status=status)

    def out_of_range(request: HttpRequest, exc: Any) -> HttpResponse:
        # SQLite raises OverflowError for ints past 64 bits, PostgreSQL a DataError.
        return reply(request, "a number or value is out of range", 400)

    def too_big(request: HttpRequest, exc: Any) -> HttpResponse:
        return reply(request, "request body too large", 413)

    def suspicious(request: HttpRequest, exc: Any) -> HttpResponse:
        return reply(request, "malformed request", 400)

    def invalid_value(request: HttpRequest, exc: Any) -> HttpResponse:
        return reply(request, "invalid value: " + "; ".join(getattr(exc, "messages", [])), 400)

    api.add_exception_handler(OverflowError, out_of_range)
    api.add_exception_handler(DataError, out_of_range)
    api.add_exception_handler(RequestDataTooBig, too_big)
    api.add_exception_handler(SuspiciousOperation, suspicious)
    api.add_exception_handler(DjangoValidationError, invalid_value)
    document_errors(api)


def document_errors(api: NinjaAPI) -> None:
    """Make `api`'s OpenAPI list the error statuses each operation can return."""
    build = api.get_openapi_schema

    def schema_with_errors(**kwargs: Any) -> Any:
        schema = build(**kwargs)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Error"] = ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                _add_errors(path, method, operation)
        return schema

    api.get_openapi_schema = schema_with_errors  # type: ignore[method-assign]


def _add_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    # Ninja keys responses by int status: one key type, or JSON would repeat a key.
    responses = {str(k): v for k, v in operation.get("responses", {}).items()}
    operation["responses"] = responses
    wanted = ["400", "429"]
    if operation.get("security"):
        wanted.append("401")
    if operation.get("security") and method not in _SAFE_METHODS:
        wanted.append("403")
    if "{" in path:
        wanted.append("404")
    for status in wanted:
        entry = responses.setdefault(status, {"description": _STANDARD[status]})
        content = entry.setdefault("content", {})
        content.setdefault("application/json", {"schema": {"$ref": "#/components/schemas/Error"}})


class JsonApiErrors:
    """Middleware: a non-JSON error answer under /api/ becomes `{"error": ...}`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        refusal = _refuse_nul(request)
        response = refusal or self.get_response(request)
        if response.status_code < 400:
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        return _as_json(response)


def _refuse_nul(request: HttpRequest) -> HttpResponse | None:
    """A 400 for text with NUL characters, on every database alike (PostgreSQL cannot
    store them; SQLite would, and they would then break other tools)."""
    query = request.META.get("QUERY_STRING", "")
    in_body = False
    if request.content_type == "application/json":
        try:
            in_body = b"\\u0000" in request.body
        except RequestDataTooBig:
            return JsonResponse({"error": "request body too large"}, status=413)
    if "\x00" in request.path_info or "%00" in query or in_body:
        return JsonResponse({"error": "text may not contain NUL (\\u0000) characters"}, status=400)
    return None


def _as_json(response: HttpResponse) -> HttpResponse:
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    message = {
        404: "not found: no such API path",
        405: "method not allowed",
        403: "forbidden (CSRF check failed or not allowed)",
        500: "internal server error",
    }.get(status, phrase)
    replaced = JsonResponse({"error": message}, status=status)
    # Keep what the error says in headers (Allow, Content-Range of a 416, Retry-After).
    for header, value in response.items():
        if header.lower() not in ("content-type", "content-length"):
            replaced[header] = value
    if status >= 500:
        log.error("API %s answered as JSON", status)
    return replaced
