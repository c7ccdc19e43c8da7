"""A small HTTP/1.1 server for the agent's loopback API.

`http.server` parses every header block with the `email` package and writes the
status line, each header and the body separately; on a batch-1 prediction of a
few milliseconds that is a visible share of the round trip. This server reads a
request with a few `readline` calls, answers with one `sendall`, keeps the
connection alive (HTTP/1.1 default; HTTP/1.0 on request) and runs the handler
on the connection's own thread: no hand-off between threads per request.

It speaks only what loopback clients need: `Content-Length` bodies (chunked
request bodies get 411), `Expect: 100-continue`, keep-alive, and streamed
(chunked) responses for handlers that return an iterator. Malformed or
oversized request heads get a 4xx and the connection is closed.
"""

from __future__ import annotations

import socket
import socketserver
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any

__all__ = ["HttpError", "LoopbackTcpServer", "LoopbackUnixServer", "Request", "Response"]

MAX_LINE = 8192
MAX_HEADERS = 100
IDLE_TIMEOUT_S = 30.0


class HttpError(Exception):
    """A request the server answers with `status` and closes the connection after."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One parsed request. Header names are lower-case; the body is read in full."""

    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    """An answer: `body` bytes, or `stream` (sent chunked) when it is not None."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterable[bytes] | None = None


# (request, read_body) -> Response. `read_body(limit)` reads the announced body;
# the handler decides whether a body is wanted and how large it may be.
Handler = Callable[[Request, Callable[[int], bytes]], Response]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    # One formatdate per second, not per response.
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _head(status: int, content_type: str, length: int | None, close: bool, extra: Any) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Unknown").encode("ascii")),
        b"Server: tinyfleet-agent",
        b"Date: " + _date(),
        b"Content-Type: " + content_type.encode("latin-1"),
        b"Cache-Control: no-store",
    ]
    if length is None:
        lines.append(b"Transfer-Encoding: chunked")
    else:
        lines.append(b"Content-Length: %d" % length)
    for name, value in extra.items():
        lines.append(f"{name}: {value}".encode("latin-1"))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Connection(socketserver.StreamRequestHandler):
    """One client connection: requests are read and answered in turn on this thread."""

    rbufsize = 65536
    wbufsize = 0
    timeout = IDLE_TIMEOUT_S
    server: LoopbackTcpServer | LoopbackUnixServer

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # Answers go out in one write, but a client's request may not: no Nagle.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        while True:
            try:
                keep_alive = self._one()
            except (TimeoutError, ConnectionError, OSError):
                return
            if not keep_alive:
                return

    def _one(self) -> bool:
        """Serve one request; return whether the connection stays open."""
        try:
            request = self._read_head()
        except HttpError as e:
            self._send(Response(e.status, _error_body(str(e))), close=True)
            return False
        if request is None:
            return False  # the client closed the connection between requests
        close = _wants_close(request)
        state = {"read": False, "close": close}

        def read_body(limit: int) -> bytes:
            state["read"] = True
            return self._read_body(request, limit)

        try:
            response = self.server.app(request, read_body)
        except HttpError as e:
            response, state["close"] = Response(e.status, _error_body(str(e))), True
        if not state["read"] and request.headers.get("content-length", "0") != "0":
            state["close"] = True  # an unread body would be taken for the next request
        self._send(response, close=bool(state["close"]))
        return not state["close"]

    def _read_head(self) -> Request | None:
        line = self.rfile.readline(MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):  # RFC 9112: ignore empty lines before a request
            line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_LINE:
            raise HttpError(414, "request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = self.rfile.readline(MAX_LINE + 1)
            if len(raw) > MAX_LINE:
                raise HttpError(431, "header line too long")
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            # Repeated headers join with commas (RFC 9110), except a second length.
            if key in headers:
                if key == "content-length":
                    raise HttpError(400, "more than one Content-Length")
                value = f"{headers[key]}, {value}"
            headers[key] = value
        else:
            raise HttpError(431, f"more than {MAX_HEADERS} headers")
        path, _, query = target.partition("?")
        return Request(method, path, query, version, headers)

    def _read_body(self, request: Request, limit: int) -> bytes:
        if "transfer-encoding" in request.headers:
            raise HttpError(411, "chunked bodies are not accepted; send Content-Length")
        length_header = request.headers.get("content-length")
        if length_header is None or not length_header.isdigit():
            raise HttpError(411, "Content-Length is required")
        length = int(length_header)
        if length > limit:
            raise HttpError(413, f"body is larger than {limit} bytes")
        if request.headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body: bytes = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionError("client closed the connection inside the body")
        request.body = body
        return body

    def _send(self, response: Response, *, close: bool) -> None:
        if response.stream is None:
            head = _head(
                response.status,
                response.content_type,
                len(response.body),
                close,
                response.headers,
            )
            self.wfile.write(head + response.body)
            return
        self.wfile.write(
            _head(response.status, response.content_type, None, close, response.headers)
        )
        for chunk in response.stream:
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")


def _wants_close(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def _error_body(message: str) -> bytes:
    import json

    return json.dumps({"error": message}).encode()


class LoopbackTcpServer(socketserver.ThreadingTCPServer):
    """A thread per connection; `app(request, read_body)` answers each request."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: Handler) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        super().__init__(address, _Connection)


class LoopbackUnixServer(socketserver.ThreadingUnixStreamServer):
    """The same on a unix socket (mode 0660; a stale socket file is replaced)."""

    daemon_threads = True

    def __init__(self, path: Path, app: Handler) -> None:
        self.path = path
        self.app = app
        if path.is_socket():
            path.unlink()  # a stale socket from a previous run; never other files
        super().__init__(str(path), _Connection)
        path.chmod(0o660)
