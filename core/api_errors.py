"""The one JSON error shape of both APIs (operator and device): {"error": "..."}."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI


def error_response(
    api: NinjaAPI, request: HttpRequest, message: str, status: int, **extra: Any
) -> HttpResponse:
    """`{"error": message, **extra}` with `status`, rendered by `api`'s renderer."""
    return api.create_response(request, {"error": message, **extra}, status=status)
