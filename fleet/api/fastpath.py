"""The device fast paths in front of Django: WSGI wrapper and middleware.

The fleet's two most frequent requests are answered without Django's request handling
when nothing unusual is going on (fleet/devices/state.py: an unchanged poll, 304;
fleet/telemetry/fastpath.py: a deferred telemetry batch, 202). Under gunicorn,
`DeviceFastPathApp` (tinyfleet/wsgi.py) answers them before Django's handler builds a
request, sends its signals and runs the middleware chain. `TelemetryFastPath` is the
same for telemetry as a middleware, for servers that do not load tinyfleet/wsgi.py (the
test client, ASGI); polls have `DeviceStateFastPath` there. Everything else, and every
request a fast path declines, goes to Django unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse
from tinyfleet_agent.protocol import DEVICE_API_PREFIX

from fleet.devices.state import STATE_PATH, not_modified_etag
from fleet.telemetry import fastpath as telemetry

TELEMETRY_PATH = f"{DEVICE_API_PREFIX}/telemetry"


def _telemetry_answer(meta: dict[str, Any], raw: bytes) -> tuple[int, bytes] | None:
    answer = telemetry.ingest(meta, raw)
    if answer is not None and answer[0] == 202:
        from fleet.rollout_tasks import nudge

        nudge()  # what the view does once a batch is stored
    return answer


class DeviceFastPathApp:
    """WSGI wrapper around Django's application."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
        if path == STATE_PATH and method == "GET":
            etag = not_modified_etag(environ)
            if etag is not None:
                start_response("304 Not Modified", [("ETag", etag), ("Cache-Control", "no-cache")])
                return []
        elif path == TELEMETRY_PATH and method == "POST" and telemetry.wants(environ):
            # The length is capped by `wants`; Django reads the same bytes if it answers.
            raw = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            environ["wsgi.input"] = io.BytesIO(raw)
            answer = _telemetry_answer(environ, raw)
            if answer is not None:
                status, body = answer
                reason = "202 Accepted" if status == 202 else "200 OK"
                headers = [
                    ("Content-Type", telemetry.CONTENT_TYPE),
                    ("Content-Length", str(len(body))),
                ]
                start_response(reason, headers)
                return [body]
        return self.app(environ, start_response)


class TelemetryFastPath:
    """Middleware: a deferred telemetry batch stored with one statement."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.path_info == TELEMETRY_PATH
            and request.method == "POST"
            and telemetry.wants(request.META)
        ):
            answer = _telemetry_answer(request.META, request.body)
            if answer is not None:
                return HttpResponse(
                    answer[1], status=answer[0], content_type=telemetry.CONTENT_TYPE
                )
        return self.get_response(request)
