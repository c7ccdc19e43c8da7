"""The least a gunicorn gthread worker can spend on the fleet's two hot requests.

A WSGI application with no Django and no database: an unchanged poll is answered 304
with a fixed ETag, a telemetry POST has its body read and is answered 202, `/healthz`
200. Served by gunicorn exactly as tinyfleet is (same worker class, workers, threads and
load generator), its CPU per request is the floor under the server's own figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

ACCEPTED = b'{"accepted": true}'


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")
    if method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        start_response(
            "202 Accepted",
            [("Content-Type", "application/json"), ("Content-Length", str(len(ACCEPTED)))],
        )
        return [ACCEPTED]
    if path.endswith("/state"):
        start_response("304 Not Modified", [("ETag", '"floor"'), ("Cache-Control", "no-cache")])
        return []
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
