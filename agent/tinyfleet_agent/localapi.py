"""The agent's local HTTP API, on loopback (or a unix socket) only.

    POST /v1/predict   {"inputs": [...]} -> {"outputs", "prediction_id", "bundle", "latency_ms"}
    POST /v1/feedback  {"prediction_id", "label", "index"?} -> {"ok": true}
    GET  /v1/health    status, active bundle, model loaded, update/metadata fields
    GET  /v1/model     bundle id, release, runtime, pipeline spec
    POST /v1/stream    sensor samples in, a prediction per hop (sensorstream.py)

Errors are `{"error": "..."}` with 400, 403, 404, 405, 411, 413, 500 or 503 (no
model yet). The updater swaps models with `set_predictor` while requests are
in flight: each request keeps the predictor it started with, and a replaced
predictor is closed when its last request finishes.

Loopback is not a security boundary against the browser on the same device:
a web page can send requests to 127.0.0.1. So requests carrying an `Origin`
header are refused and the `Host` header must name a loopback host (DNS
rebinding), unless the operator explicitly forced a non-loopback bind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import socketserver
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import __version__
from ._internal.fallback import FallbackForwarder, is_loopback_name
from ._internal.logs import fields
from ._internal.telemetry import Telemetry
from .predictor import InputError, Predictor

__all__ = ["ApiError", "LocalApi", "NonLoopbackError", "check_loopback"]

log = logging.getLogger("tinyfleet_agent.api")
MAX_INPUTS = 64
MAX_LABEL_CHARS = 256


class NonLoopbackError(ValueError):
    """Refused to listen on an address that is not loopback."""


class ApiError(Exception):
    """An error answered to the client as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_loopback(host: str) -> None:
    """Raises NonLoopbackError unless every address of `host` is loopback."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror as e:
            raise NonLoopbackError(f"cannot resolve {host!r}: {e}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(a.is_loopback for a in addresses):
        raise NonLoopbackError(f"{host} is not a loopback address; force it explicitly")


def _host_is_loopback(header: str) -> bool:
    host = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    host = host.split("]")[0].lstrip("[") if host.startswith("[") else host
    return is_loopback_name(host)


@dataclass
class _Active:
    """A predictor plus the requests currently using it."""

    predictor: Predictor
    meta: dict[str, Any]
    in_flight: int = 0
    retired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1
            close = self.retired and self.in_flight == 0
        if close:
            self.predictor.close()


class _Lru:
    """prediction_id -> (bundle, predicted labels), oldest evicted first."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def put(self, key: str, value: tuple[str, list[str]]) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def pop(self, key: str) -> tuple[str, list[str]] | None:
        with self._lock:
            return self._items.pop(key, None)


class LocalApi:
    """The local API service. `start()` serves on a thread; `shutdown()` stops.

    Raises (on construction):
        NonLoopbackError: `listen` is not loopback and not forced.
        OSError: the address or socket path cannot be bound.
    """

    def __init__(
        self,
        listen: str | tuple[str, int] = ("127.0.0.1", 8470),
        *,
        unix_socket: Path | None = None,
        allow_non_loopback: bool = False,
        telemetry: Telemetry | None = None,
        max_body_bytes: int = 1 << 20,
        feedback_capacity: int = 10_000,
        max_concurrency: int = 8,
        poll_interval: float = 0.5,
    ) -> None:
        self.telemetry = telemetry or Telemetry(agent_version=__version__)
        # Set by the fleet link when the device is enrolled; off until the server enables it.
        self.fallback: FallbackForwarder | None = None
        self.max_body_bytes = max_body_bytes
        self.check_host = not allow_non_loopback and unix_socket is None
        self._active: _Active | None = None
        self._swap_lock = threading.Lock()
        self._health: dict[str, Any] = {}
        self._feedback = _Lru(feedback_capacity)
        # Bounds memory and CPU under a request flood; extra requests wait.
        self._compute = threading.BoundedSemaphore(max_concurrency)
        self._started = time.monotonic()
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()
        # How often serve_forever wakes to notice shutdown(): the stop latency.
        self._poll_interval = poll_interval
        self._server = self._bind(listen, unix_socket, allow_non_loopback)

    def _bind(
        self, listen: str | tuple[str, int], unix_socket: Path | None, forced: bool
    ) -> socketserver.BaseServer:
        if unix_socket is not None:
            return _UnixServer(Path(unix_socket), self)
        if isinstance(listen, str):
            from .config import parse_listen  # local: config is only needed for strings

            listen = parse_listen(listen)
        host, port = listen
        if not forced:
            check_loopback(host)
        return _TcpServer((host, port), self)

    # -- control (used by the agent / updater) ------------------------------

    @property
    def address(self) -> str:
        """ "host:port" actually bound (port 0 resolved), or the socket path."""
        if isinstance(self._server, _UnixServer):
            return str(self._server.path)
        address: Any = self._server.server_address
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def set_predictor(self, predictor: Predictor | None, bundle_meta: Mapping[str, Any]) -> None:
        """Atomically make `predictor` serve (None: stop serving, 503)."""
        new = _Active(predictor, dict(bundle_meta)) if predictor is not None else None
        with self._swap_lock:
            old, self._active = self._active, new
        if new is not None and new.meta.get("bundle"):
            self.telemetry.set_bundle(str(new.meta["bundle"]), predictor_load_ms(predictor))
        if old is not None and old.predictor is not predictor:
            with old.lock:
                old.retired = True
                close = old.in_flight == 0
            if close:
                old.predictor.close()

    def set_health(self, **values: Any) -> None:
        """Merge fields into /v1/health (update status, last error, metadata freshness)."""
        with self._swap_lock:
            self._health.update(values)

    def start(self) -> None:
        self._serving.set()  # before the thread runs: shutdown() must wait for it
        self._thread = threading.Thread(target=self.serve_forever, name="local-api", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        log.info("listening", extra=fields(address=self.address))
        self._serving.set()
        self._server.serve_forever(poll_interval=self._poll_interval)

    def shutdown(self) -> None:
        """Stop serving (if started) and release the address or socket file."""
        if self._serving.is_set():
            # BaseServer.shutdown() waits for serve_forever: never call it otherwise.
            self._server.shutdown()
        self._server.server_close()
        if isinstance(self._server, _UnixServer):
            self._server.path.unlink(missing_ok=True)

    # -- request handling (transport independent) ----------------------------

    @contextlib.contextmanager
    def borrowed_model(self) -> Iterator[tuple[Predictor, dict[str, Any]] | None]:
        """The active predictor and its bundle meta, kept open (not closed by a swap)
        until the block ends; None when no model is installed."""
        try:
            active = self._acquire()
        except ApiError:
            yield None
            return
        try:
            yield active.predictor, dict(active.meta)
        finally:
            active.release()

    @property
    def compute_slot(self) -> threading.BoundedSemaphore:
        """One of the slots predictions compute in (background work takes one too)."""
        return self._compute

    def _acquire(self) -> _Active:
        with self._swap_lock:
            active = self._active
            if active is None:
                raise ApiError(503, "no model is installed yet")
            with active.lock:
                active.in_flight += 1
        return active

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        """Route one request; `body` is the parsed JSON (POST) or None."""
        routes = {
            ("POST", "/v1/predict"): self._predict,
            ("POST", "/v1/feedback"): self._feedback_route,
            ("GET", "/v1/health"): self._health_route,
            ("GET", "/v1/model"): self._model_route,
            ("POST", "/v1/stream"): self._stream_route,
        }
        route = routes.get((method, path))
        if route is None:
            known = {p for _, p in routes}
            raise ApiError(405 if path in known else 404, f"no route {method} {path}")
        return 200, route(body)

    def _predict(self, body: Any) -> dict[str, Any]:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(400, 'body must be {"inputs": [...]} with at least one input')
        if len(inputs) > MAX_INPUTS:
            raise ApiError(400, f"at most {MAX_INPUTS} inputs per request")
        try:
            active = self._acquire()
        except ApiError:
            self.telemetry.record_error(None, "no-model")
            raise
        bundle = str(active.meta.get("bundle") or "")
        try:
            with self._compute:
                started = time.perf_counter()
                prediction = active.predictor.predict_detailed(inputs)
                latency_ms = (time.perf_counter() - started) * 1000.0
        except InputError as e:
            self.telemetry.record_error(bundle, "bad-input")
            raise ApiError(400, str(e)) from None
        except Exception:
            self.telemetry.record_error(bundle, "internal")
            log.exception("prediction failed", extra=fields(bundle=bundle))
            raise ApiError(500, "prediction failed") from None
        finally:
            active.release()
        self.telemetry.record_request(
            bundle,
            latency_ms,
            prediction.input_lengths,
            prediction.confidences,
            prediction.low_confidence,
        )
        prediction_id = uuid.uuid4().hex
        labels = [o["label"] for o in prediction.outputs if isinstance(o, dict) and "label" in o]
        if labels:
            self._feedback.put(prediction_id, (bundle, labels))
        answer = {
            "outputs": prediction.outputs,
            "prediction_id": prediction_id,
            "bundle": bundle,
            "latency_ms": round(latency_ms, 3),
        }
        if self.fallback is not None and prediction.low_confidence:
            outcome = self.fallback.submit(bundle, prediction_id, inputs, prediction.outputs)
            if outcome != "off":
                answer["fallback"] = outcome  # "queued" or "dropped": never silent
        return answer

    def _stream_route(self, body: Any) -> dict[str, Any]:
        # Sensor streams: buffered in sensorstream, predicted through _predict.
        from .sensorstream import SensorStreamError, stream_route

        try:
            return stream_route(self, body)
        except SensorStreamError as e:
            raise ApiError(400, str(e)) from None

    def _feedback_route(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be {"prediction_id": ..., "label": ...}')
        prediction_id, label = body.get("prediction_id"), body.get("label")
        index = body.get("index", 0)
        if not isinstance(prediction_id, str) or not isinstance(label, str):
            raise ApiError(400, "prediction_id and label must be strings")
        if not 0 < len(label) <= MAX_LABEL_CHARS:
            raise ApiError(400, f"label must be 1..{MAX_LABEL_CHARS} characters")
        if type(index) is not int or index < 0:
            raise ApiError(400, "index must be a non-negative integer")
        entry = self._feedback.pop(prediction_id)
        if entry is None:
            raise ApiError(404, "unknown or expired prediction_id (feedback counts once)")
        bundle, predicted = entry
        if index >= len(predicted):
            self._feedback.put(prediction_id, entry)
            raise ApiError(400, f"index must be < {len(predicted)}")
        self.telemetry.record_feedback(bundle, predicted[index], label)
        return {"ok": True, "bundle": bundle}

    def _health_route(self, body: Any) -> dict[str, Any]:
        with self._swap_lock:
            active, extra = self._active, dict(self._health)
        return {
            "status": "ok" if active else "no-model",
            "model_loaded": active is not None,
            "bundle": active.meta.get("bundle") if active else None,
            "release": active.meta.get("release") if active else None,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "agent_version": __version__,
            **extra,
        }

    def _model_route(self, body: Any) -> dict[str, Any]:
        with self._swap_lock:
            active = self._active
        if active is None:
            raise ApiError(503, "no model is installed yet")
        predictor = active.predictor
        return {
            **active.meta,
            "runtime": predictor.runtime.name,
            "runtime_version": predictor.runtime.version,
            "pipeline": predictor.spec.to_dict(),
            "threads": predictor.threads,
            "load_ms": predictor_load_ms(predictor),
            "inputs": [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}
                for s in predictor.runtime.inputs
            ],
        }


def predictor_load_ms(predictor: Predictor | None) -> float | None:
    if predictor is None:
        return None
    return round(predictor.load_seconds * 1000.0, 3)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection
    timeout = 30  # idle keep-alive connections are closed (slowloris)
    server_version = "tinyfleet-agent"
    sys_version = ""
    api: LocalApi

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # Headers and body go out in two writes: without NODELAY, Nagle +
            # delayed ACK add ~40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def address_string(self) -> str:
        return str(self.client_address[0]) if isinstance(self.client_address, tuple) else "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http", extra=fields(client=self.address_string(), line=format % args))

    def do_GET(self) -> None:
        self._dispatch(read_body=False)

    def do_POST(self) -> None:
        self._dispatch(read_body=True)

    def do_PUT(self) -> None:
        self._dispatch(read_body=False)

    do_DELETE = do_PATCH = do_PUT

    def _dispatch(self, read_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            self._check_origin()
            body = self._read_json() if read_body else None
            status, payload = self.api.handle(self.command, path, body)
        except ApiError as e:
            status, payload = e.status, {"error": str(e)}
        except Exception:  # never let a handler bug kill the connection silently
            log.exception("request failed", extra=fields(path=path))
            status, payload = 500, {"error": "internal error"}
        try:
            data = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        except ValueError:  # NaN/inf from a broken model: JSON cannot carry it
            status, data = 500, b'{"error":"the model produced non-finite output"}'
        self._send(status, data)

    def _check_origin(self) -> None:
        if not self.api.check_host:
            return
        if self.headers.get("Origin") is not None:
            raise ApiError(403, "browser requests (Origin header) are not allowed")
        if not _host_is_loopback(self.headers.get("Host", "localhost")):
            raise ApiError(403, "Host header must name a loopback address")

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not accepted; send Content-Length")
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            raise ApiError(411, "Content-Length is required")
        length = int(length_header)
        if length > self.api.max_body_bytes:
            # Not reading the body leaves the stream unusable: close it.
            self.close_connection = True
            raise ApiError(413, f"body is larger than {self.api.max_body_bytes} bytes")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "body is not valid JSON") from None

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _handler_for(api: LocalApi) -> type[_Handler]:
    return type("Handler", (_Handler,), {"api": api})


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: LocalApi) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _handler_for(api))

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn): skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, api: LocalApi) -> None:
        self.path = path
        if path.is_socket():
            path.unlink()  # a stale socket from a previous run; never other files
        super().__init__(str(path), _handler_for(api))
        path.chmod(0o660)
