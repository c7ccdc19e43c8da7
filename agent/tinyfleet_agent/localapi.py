"""The agent's local HTTP API, on loopback (or a unix socket) only.

    POST /v1/predict   {"inputs": [...]} -> {"outputs", "prediction_id", "bundle", "latency_ms"}
    POST /v1/feedback  {"prediction_id", "label", "index"?} -> {"ok": true}
    GET  /v1/health    status, active bundle, model loaded, update/metadata fields
    GET  /v1/model     bundle id, release, runtime, pipeline spec
    POST /v1/stream    sensor samples in, a prediction per hop (sensorstream.py)

Errors are `{"error": "..."}` with 400, 403, 404, 405, 411, 413, 415, 500 or 503
(no model yet). For `tensor` models, `/v1/predict` also takes one example as a binary
body: `Content-Type: application/x-npy` (a model with one input) or
`application/x-npz` (one array per input name), read with `allow_pickle=False`.

The HTTP layer is `_internal/loophttp.py`: keep-alive, one `sendall` per answer, the
handler on the connection's thread; JSON goes through orjson when it is installed
(`tinyfleet-agent[fast]`). Other components add routes with `LocalApi.add_route`.

The updater swaps models with `set_predictor` while requests are in flight: each
request keeps the predictor it started with, and a replaced predictor is closed
when its last request finishes.

Loopback is not a security boundary against the browser on the same device:
a web page can send requests to 127.0.0.1. So requests carrying an `Origin`
header are refused and the `Host` header must name a loopback host (DNS
rebinding), unless the operator explicitly forced a non-loopback bind.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import logging
import socket
import socketserver
import threading
import time
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._internal.fallback import FallbackForwarder, is_loopback_name
from ._internal.logs import fields
from ._internal.loophttp import (
    HttpError,
    LoopbackTcpServer,
    LoopbackUnixServer,
    Request,
    Response,
)
from ._internal.telemetry import Telemetry
from .predictor import InputError, Predictor

try:  # optional (`tinyfleet-agent[fast]`): ~10x faster JSON for 384-float answers
    import orjson as _orjson
except ImportError:  # pragma: no cover - the stdlib encoder is the fallback
    _orjson = None  # type: ignore[assignment, unused-ignore]

__all__ = ["ApiError", "LocalApi", "NonLoopbackError", "RawRoute", "Request", "Response"]
__all__ += ["check_loopback"]

log = logging.getLogger("tinyfleet_agent.api")
MAX_INPUTS = 64
MAX_LABEL_CHARS = 256
TENSOR_TYPES = ("application/x-npy", "application/x-npz")
# A JSON route takes the parsed body (None for GET) and returns the answer object.
JsonRoute = Callable[[Any], dict[str, Any]]
# A raw route gets the request and a `read_body(limit)` callable and returns a Response
# (e.g. a streamed one: `Response(200, stream=iterator, content_type=...)`).
RawRoute = Callable[[Request, Callable[[int], bytes]], Response]


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
        self._routes: dict[tuple[str, str], tuple[JsonRoute | None, RawRoute | None]] = {
            ("POST", "/v1/predict"): (self._predict, None),
            ("POST", "/v1/feedback"): (self._feedback_route, None),
            ("GET", "/v1/health"): (self._health_route, None),
            ("POST", "/v1/stream"): (self._stream_route, None),
            ("GET", "/v1/model"): (self._model_route, None),
        }
        self._server = self._bind(listen, unix_socket, allow_non_loopback)

    def add_route(
        self,
        method: str,
        path: str,
        *,
        json_route: JsonRoute | None = None,
        raw_route: RawRoute | None = None,
    ) -> None:
        """Serve `method path` with a JSON route (parsed body in, object out) or a raw
        one (request in, Response out: streamed answers). The Origin/Host checks apply
        to every route before it runs.

        Raises:
            ValueError: the route exists already, or not exactly one kind was given.
        """
        if (json_route is None) == (raw_route is None):
            raise ValueError("give exactly one of json_route and raw_route")
        key = (method.upper(), path)
        if key in self._routes:
            raise ValueError(f"{method} {path} is already routed")
        self._routes[key] = (json_route, raw_route)

    def _bind(
        self, listen: str | tuple[str, int], unix_socket: Path | None, forced: bool
    ) -> socketserver.BaseServer:
        if unix_socket is not None:
            return LoopbackUnixServer(Path(unix_socket), self._serve)
        if isinstance(listen, str):
            from .config import parse_listen  # local: config is only needed for strings

            listen = parse_listen(listen)
        host, port = listen
        if not forced:
            check_loopback(host)
        return LoopbackTcpServer((host, port), self._serve)

    # -- control (used by the agent / updater) ------------------------------

    @property
    def address(self) -> str:
        """ "host:port" actually bound (port 0 resolved), or the socket path."""
        if isinstance(self._server, LoopbackUnixServer):
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
        if isinstance(self._server, LoopbackUnixServer):
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
        """Route one JSON request; `body` is the parsed JSON (POST) or None."""
        json_route, _ = self._route(method, path)
        if json_route is None:
            raise ApiError(405, f"{method} {path} is not a JSON route")
        return 200, json_route(body)

    def _route(self, method: str, path: str) -> tuple[JsonRoute | None, RawRoute | None]:
        route = self._routes.get((method, path))
        if route is None:
            known = {p for _, p in self._routes}
            raise ApiError(405 if path in known else 404, f"no route {method} {path}")
        return route

    def _serve(self, request: Request, read_body: Callable[[int], bytes]) -> Response:
        """The HTTP entry point: checks, routing, body parsing, JSON encoding."""
        try:
            self._check_origin(request)
            json_route, raw_route = self._route(request.method, request.path)
            if raw_route is not None:
                return raw_route(request, read_body)
            assert json_route is not None
            body = None
            if request.method == "POST":
                body = self._parse_body(request, read_body(self.max_body_bytes))
            return _json_response(200, json_route(body))
        except ApiError as e:
            return _json_response(e.status, {"error": str(e)})
        except HttpError:
            raise  # the HTTP layer answers and closes the connection
        except Exception:  # never let a handler bug kill the connection silently
            log.exception("request failed", extra=fields(path=request.path))
            return _json_response(500, {"error": "internal error"})

    def _check_origin(self, request: Request) -> None:
        if not self.check_host:
            return
        if "origin" in request.headers:
            raise ApiError(403, "browser requests (Origin header) are not allowed")
        if not _host_is_loopback(request.headers.get("host", "localhost")):
            raise ApiError(403, "Host header must name a loopback address")

    def _parse_body(self, request: Request, raw: bytes) -> Any:
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind in TENSOR_TYPES:
            if request.path != "/v1/predict":
                raise ApiError(415, f"{kind} bodies are only taken by /v1/predict")
            return {"inputs": [self._tensor_body(kind, raw)]}
        try:
            return _decode(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "body is not valid JSON") from None

    def _tensor_body(self, kind: str, raw: bytes) -> dict[str, np.ndarray]:
        """One example as arrays by input name, from .npy/.npz bytes (no pickles)."""
        with self.borrowed_model() as borrowed:
            if borrowed is None:
                raise ApiError(503, "no model is installed yet")
            predictor = borrowed[0]
            if predictor.encoder is not None:
                raise ApiError(415, f"task {predictor.spec.task} takes JSON strings")
            names = [s.name for s in predictor.runtime.inputs]
        try:
            if kind == "application/x-npy":
                if len(names) != 1:
                    raise ApiError(415, f"the model has inputs {names}: send application/x-npz")
                array = np.load(io.BytesIO(raw), allow_pickle=False)
                if not isinstance(array, np.ndarray):
                    raise ApiError(400, "an application/x-npy body must hold one array")
                return {names[0]: array}
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ApiError(400, f"body is not a valid {kind} array: {e}") from None

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


def _encode(payload: Mapping[str, Any]) -> bytes:
    """JSON bytes; raises ValueError on NaN or infinity (JSON cannot carry them)."""
    if _orjson is not None:
        data: bytes = _orjson.dumps(payload, option=_orjson.OPT_SERIALIZE_NUMPY)
        # orjson writes non-finite floats as null: re-check the rare answers holding
        # a null with the strict encoder (None is legitimate in /v1/health).
        if b"null" not in data:
            return data
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()


def _decode(raw: bytes) -> Any:
    """Parsed JSON; raises ValueError (or UnicodeDecodeError) on anything else."""
    if _orjson is not None:
        return _orjson.loads(raw)
    return json.loads(raw)


def _json_response(status: int, payload: Mapping[str, Any]) -> Response:
    try:
        return Response(status, _encode(payload))
    except (ValueError, TypeError):  # NaN/inf from a broken model: JSON cannot carry it
        return Response(500, b'{"error":"the model produced non-finite output"}')
