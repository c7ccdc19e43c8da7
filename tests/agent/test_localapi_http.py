"""The local API's own HTTP layer (_internal/loophttp.py) over real sockets: keep-alive,
HTTP/1.0, 100-continue, malformed heads, binary tensor bodies and added (streamed) routes."""

from __future__ import annotations

import http.client
import io
import json
import pickle
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinyfleet_agent.localapi import LocalApi, Request, Response
from tinyfleet_agent.predictor import Predictor

from . import agent_fixtures as F

META = {"bundle": "tensor-r1", "release": 1}


@pytest.fixture(scope="module")
def tensor_predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    directory = tmp_path_factory.mktemp("tensor")
    F.build_tensor_onnx(directory / "model.onnx")
    return Predictor(directory, F.spec("tensor"))


@pytest.fixture
def api(tensor_predictor: Predictor) -> Iterator[LocalApi]:
    service = LocalApi("127.0.0.1:0", max_body_bytes=4096, poll_interval=0.01)
    service.set_predictor(tensor_predictor, META)
    service.start()
    yield service
    service.shutdown()


def _connect(api: LocalApi) -> socket.socket:
    host, port = api.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


# Bytes read past the end of a response: with pipelined requests, one recv can hold the
# next response too (seen under qemu, where the client reads slower than the server writes).
_unread: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def _read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One response with a Content-Length body, read off a raw socket."""
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        rest += sock.recv(65536)
    _unread[sock] = rest[length:]
    return lines[0], headers, rest[:length]


def _request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def test_it_answers_many_requests_on_one_keep_alive_connection(api: LocalApi) -> None:
    body = json.dumps({"inputs": [{"x": [1, 0, 0, 0]}]}).encode()
    with _connect(api) as sock:
        for _ in range(5):
            sock.sendall(_request("POST", "/v1/predict", body))
            status, headers, payload = _read_response(sock)
            assert status == "HTTP/1.1 200 OK"
            assert "connection" not in headers and headers["cache-control"] == "no-store"
            assert json.loads(payload)["outputs"][0]["y"][0][0] == pytest.approx(1.0)
        # Two requests in one write (pipelined) are answered in order.
        sock.sendall(_request("GET", "/v1/health") + _request("GET", "/v1/model"))
        assert json.loads(_read_response(sock)[2])["status"] == "ok"
        assert json.loads(_read_response(sock)[2])["bundle"] == "tensor-r1"


def test_it_closes_an_http10_connection_unless_keep_alive_is_asked(api: LocalApi) -> None:
    with _connect(api) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
        status, headers, _ = _read_response(sock)
        assert status.endswith("200 OK") and headers["connection"] == "close"
        assert sock.recv(10) == b""  # closed by the server
    with _connect(api) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert "connection" not in _read_response(sock)[1]
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert _read_response(sock)[1]["connection"] == "close"


def test_it_sends_100_continue_before_reading_the_body(api: LocalApi) -> None:
    body = json.dumps({"inputs": [{"x": [0, 1, 0, 0]}]}).encode()
    with _connect(api) as sock:
        sock.sendall(
            _request(
                "POST",
                "/v1/predict",
                extra=f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n",
            )
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, payload = _read_response(sock)
        assert status.endswith("200 OK") and json.loads(payload)["bundle"] == "tensor-r1"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", "400"),
        (b"GET /v1/health SPDY/3\r\n\r\n", "400"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", "414"),
        (b"GET /v1/health HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", "431"),
        (b"GET /v1/health HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", "431"),
        (b"GET /v1/health HTTP/1.1\r\nno colon here\r\n\r\n", "400"),
        (b"POST /v1/predict HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", "400"),
    ],
)
def test_it_refuses_malformed_heads_and_closes(api: LocalApi, raw: bytes, status: str) -> None:
    with _connect(api) as sock:
        sock.sendall(raw)
        line, headers, payload = _read_response(sock)
        assert line.split()[1] == status and headers["connection"] == "close"
        assert json.loads(payload)["error"]
    assert http_get(api, "/v1/health") == 200  # the server is still fine


def test_it_closes_a_connection_whose_body_was_not_read(api: LocalApi) -> None:
    with _connect(api) as sock:
        # A GET route reads no body: the bytes must not be taken as the next request.
        sock.sendall(_request("GET", "/v1/health", b"GET /v1/model HTTP/1.1\r\n\r\n"))
        status, headers, _ = _read_response(sock)
        assert status.endswith("200 OK") and headers["connection"] == "close"
        assert sock.recv(10) == b""


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _post(api: LocalApi, body: bytes, content_type: str) -> tuple[int, Any]:
    host, port = api.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("POST", "/v1/predict", body, {"Content-Type": content_type})
    response = conn.getresponse()
    result = response.status, json.loads(response.read())
    conn.close()
    return result


def test_it_takes_binary_tensor_bodies_for_tensor_models(api: LocalApi) -> None:
    x = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32)
    status, body = _post(api, _npy(x), "application/x-npy")
    assert status == 200
    assert np.allclose(body["outputs"][0]["y"], x @ (np.arange(12).reshape(4, 3) / 10) + 1)
    npz = io.BytesIO()
    np.savez(npz, x=x[:1])
    status, body = _post(api, npz.getvalue(), "application/x-npz")
    assert status == 200 and body["outputs"][0]["y"][0][0] == pytest.approx(1.0)
    # Pickled arrays are never loaded; garbage and wrong names are clear 400s.
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert _post(api, objects.getvalue(), "application/x-npy")[0] == 400
    assert _post(api, pickle.dumps({"x": 1}), "application/x-npy")[0] == 400
    assert _post(api, b"not an array", "application/x-npy")[0] == 400
    wrong = io.BytesIO()
    np.savez(wrong, z=x)
    status, body = _post(api, wrong.getvalue(), "application/x-npz")
    assert status == 400 and "exactly" in body["error"]


def test_it_refuses_binary_bodies_for_text_models(tmp_path: Path) -> None:
    F.write_tokenizer(tmp_path / "tokenizer.json")
    F.build_encoder_onnx(tmp_path / "model.onnx", "text-classification")
    service = LocalApi("127.0.0.1:0", poll_interval=0.01)
    service.set_predictor(Predictor(tmp_path, F.spec("text-classification")), META)
    service.start()
    try:
        status, body = _post(service, _npy(np.zeros((1, 4), np.int64)), "application/x-npy")
        assert status == 415 and "takes JSON strings" in body["error"]
    finally:
        service.shutdown()


def http_get(api: LocalApi, path: str, headers: dict[str, str] | None = None) -> int:
    host, port = api.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", path, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_it_serves_routes_added_by_other_components_including_streams(api: LocalApi) -> None:
    def stream(request: Request, read_body: Callable[[int], bytes]) -> Response:
        count = int(request.query.removeprefix("n=") or "3")
        events = (f"data: {i}\n\n".encode() for i in range(count))
        return Response(200, stream=events, content_type="text/event-stream")

    api.add_route("GET", "/v1/stream", raw_route=stream)
    api.add_route("POST", "/v1/echo", json_route=lambda body: {"echo": body})
    with pytest.raises(ValueError, match="already routed"):
        api.add_route("GET", "/v1/stream", raw_route=stream)
    host, port = api.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/v1/stream?n=4")
    response = conn.getresponse()
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.read() == b"".join(f"data: {i}\n\n".encode() for i in range(4))
    conn.request("POST", "/v1/echo", json.dumps({"a": [1, 2]}))  # same connection
    assert json.loads(conn.getresponse().read()) == {"echo": {"a": [1, 2]}}
    conn.close()
    # The browser checks apply to added routes too.
    assert http_get(api, "/v1/stream", {"Origin": "https://evil.example"}) == 403


@pytest.mark.parametrize("fast_json", [True, False])
def test_it_answers_the_same_with_or_without_orjson(
    api: LocalApi, monkeypatch: pytest.MonkeyPatch, fast_json: bool
) -> None:
    from tinyfleet_agent import localapi

    if not fast_json:
        monkeypatch.setattr(localapi, "_orjson", None)
    ok = _post(api, json.dumps({"inputs": [{"x": [1, 0, 0, 0]}]}).encode(), "application/json")
    assert ok[0] == 200 and ok[1]["outputs"][0]["y"][0] == pytest.approx([1.0, 1.1, 1.2])
    # orjson would write the overflow as null: it must still be a clear 500.
    overflow = json.dumps({"inputs": [{"x": [3e38] * 4}]}).encode()
    status, body = _post(api, overflow, "application/json")
    assert status == 500 and "non-finite" in body["error"]
    assert _post(api, b"{NaN}", "application/json")[0] == 400
