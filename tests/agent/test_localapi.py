"""The local API over real sockets: happy path, every bad input, loopback only, hot swap."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tinyfleet_agent.localapi import LocalApi, NonLoopbackError, check_loopback
from tinyfleet_agent.predictor import Predictor

from . import agent_fixtures as F

META = {"bundle": "intent-r1", "release": 1, "model": "intent", "version": "1.1"}


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    directory = tmp_path_factory.mktemp("model")
    F.write_tokenizer(directory / "tokenizer.json")
    F.build_encoder_onnx(directory / "model.onnx", "text-classification")
    return Predictor(directory, F.spec("text-classification", confidence_threshold=0.99))


@pytest.fixture
def api(predictor: Predictor) -> Iterator[LocalApi]:
    service = LocalApi("127.0.0.1:0", max_body_bytes=4096, poll_interval=0.01)
    service.set_predictor(predictor, META)
    service.start()
    yield service
    service.shutdown()


class Client:
    """One keep-alive connection, as a local app would hold it."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        self.conn.request(method, path, raw, headers or {})
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def test_it_predicts_takes_feedback_and_reports_health_and_model(api: LocalApi) -> None:
    client = Client(api.address)
    status, body = client.call("POST", "/v1/predict", {"inputs": ["turn the lights on", "hello"]})
    assert status == 200 and body["bundle"] == "intent-r1" and body["latency_ms"] > 0
    assert [o["label"] in F.LABELS for o in body["outputs"]] == [True, True]
    status, ack = client.call(
        "POST",
        "/v1/feedback",
        {"prediction_id": body["prediction_id"], "label": "music", "index": 1},
    )
    assert status == 200 and ack == {"ok": True, "bundle": "intent-r1"}
    status, health = client.call("GET", "/v1/health")
    assert status == 200 and health["status"] == "ok" and health["model_loaded"] is True
    assert health["bundle"] == "intent-r1"
    api.set_health(update_status="idle", metadata_expires="2030-01-01T00:00:00Z", last_error=None)
    assert client.call("GET", "/v1/health")[1]["update_status"] == "idle"
    status, model = client.call("GET", "/v1/model")
    assert status == 200 and model["bundle"] == "intent-r1" and model["runtime"] == "onnxruntime"
    assert model["pipeline"]["labels"] == list(F.LABELS)
    assert model["pipeline"]["confidence_threshold"] == "0.99"
    batch = api.telemetry.snapshot_and_reset()
    [stats] = batch["bundles"]
    assert stats["requests"] == 1 and stats["inferences"] == 2 and stats["low_confidence"] == 2
    assert sum(stats["confidence"]) == 2 and sum(stats["latency_ms"]) == 1
    predicted = body["outputs"][1]["label"]
    assert stats["feedback"] == [{"predicted": predicted, "actual": "music", "count": 1}]


def test_it_answers_503_until_a_model_is_installed() -> None:
    service = LocalApi("127.0.0.1:0", poll_interval=0.01)
    service.start()
    try:
        client = Client(service.address)
        assert client.call("POST", "/v1/predict", {"inputs": ["x"]}) == (
            503,
            {"error": "no model is installed yet"},
        )
        assert client.call("GET", "/v1/model")[0] == 503
        status, health = client.call("GET", "/v1/health")
        assert status == 200 and health["status"] == "no-model" and health["bundle"] is None
        assert service.telemetry.snapshot_and_reset()["errors"] == {"no-model": 1}
    finally:
        service.shutdown()


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        ("POST", "/v1/predict", b"{not json", {}, 400, "not valid JSON"),
        ("POST", "/v1/predict", {"input": ["x"]}, {}, 400, "inputs"),
        ("POST", "/v1/predict", {"inputs": []}, {}, 400, "at least one"),
        ("POST", "/v1/predict", {"inputs": "hello"}, {}, 400, "inputs"),
        ("POST", "/v1/predict", [1, 2], {}, 400, "inputs"),
        ("POST", "/v1/predict", {"inputs": [1]}, {}, 400, "takes strings"),
        ("POST", "/v1/predict", {"inputs": ["x"] * 65}, {}, 400, "at most 64"),
        ("POST", "/v1/predict", {"inputs": ["x" * 5000]}, {}, 413, "larger than 4096"),
        ("POST", "/v1/feedback", {"prediction_id": "nope", "label": "music"}, {}, 404, "unknown"),
        ("POST", "/v1/feedback", {"prediction_id": 1, "label": "music"}, {}, 400, "strings"),
        ("POST", "/v1/feedback", {"prediction_id": "a", "label": ""}, {}, 400, "label"),
        (
            "POST",
            "/v1/feedback",
            {"prediction_id": "a", "label": "x", "index": -1},
            {},
            400,
            "index",
        ),
        ("POST", "/v1/feedback", ["x"], {}, 400, "prediction_id"),
        ("GET", "/v1/nothing", None, {}, 404, "no route"),
        ("GET", "/v1/predict", None, {}, 405, "no route"),
        ("DELETE", "/v1/model", None, {}, 405, "no route"),
        ("GET", "/v1/health", None, {"Origin": "https://evil.example"}, 403, "Origin"),
        ("GET", "/v1/health", None, {"Host": "evil.example:8470"}, 403, "Host"),
    ],
)
def test_it_rejects_bad_requests_with_clear_errors(
    api: LocalApi,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    got, payload = Client(api.address).call(method, path, body, headers)
    assert got == status and message in payload["error"]


def test_it_requires_content_length_and_survives_a_bad_connection(api: LocalApi) -> None:
    host, port = api.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        reply = raw.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 411") and "Content-Length" in reply
    assert Client(api.address).call("GET", "/v1/health")[0] == 200


def test_it_counts_feedback_only_once(api: LocalApi) -> None:
    client = Client(api.address)
    _, body = client.call("POST", "/v1/predict", {"inputs": ["play some music"]})
    feedback = {"prediction_id": body["prediction_id"], "label": "music"}
    assert client.call("POST", "/v1/feedback", {**feedback, "index": 3})[0] == 400
    assert client.call("POST", "/v1/feedback", feedback)[0] == 200
    assert client.call("POST", "/v1/feedback", feedback)[0] == 404


@pytest.mark.parametrize("host", ["0.0.0.0", "8.8.8.8", "::"])  # noqa: S104
def test_it_refuses_to_listen_beyond_loopback(host: str) -> None:
    with pytest.raises(NonLoopbackError, match="not a loopback"):
        LocalApi((host, 0))


def test_it_listens_on_localhost_ipv6_loopback_or_when_forced() -> None:
    check_loopback("localhost")
    check_loopback("::1")
    forced = LocalApi("0.0.0.0:0", allow_non_loopback=True)
    assert forced.address.startswith("0.0.0.0:")
    forced.shutdown()


def test_it_serves_on_a_unix_socket(predictor: Predictor, tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    service = LocalApi(unix_socket=path, poll_interval=0.01)
    service.set_predictor(predictor, META)
    service.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            body = json.dumps({"inputs": ["open door"]}).encode()
            request = (
                b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(payload)["outputs"][0]["label"] in F.LABELS
        assert oct(path.stat().st_mode & 0o777) == "0o660"
    finally:
        service.shutdown()
    assert not path.exists()


def test_it_swaps_the_model_while_serving_and_closes_the_old_one(tmp_path: Path) -> None:
    models = []
    for release in (1, 2):
        directory = tmp_path / f"r{release}"
        directory.mkdir()
        F.write_tokenizer(directory / "tokenizer.json")
        F.build_encoder_onnx(directory / "model.onnx", "text-classification", seed=release)
        models.append(Predictor(directory, F.spec("text-classification")))
    closed: list[int] = []
    for index, model in enumerate(models):

        def close(i: int = index) -> None:
            closed.append(i)

        model.close = close  # type: ignore[method-assign]
    service = LocalApi("127.0.0.1:0", poll_interval=0.01)
    service.set_predictor(models[0], {**META, "bundle": "r1"})
    service.start()
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        client = Client(service.address)
        while not stop.is_set():
            status, body = client.call("POST", "/v1/predict", {"inputs": ["turn the lights on"]})
            statuses.append((status, body.get("bundle", "")))

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for swap in range(10):
            target = swap % 2 == 0
            service.set_predictor(
                models[1 if target else 0], {**META, "bundle": "r2" if target else "r1"}
            )
            threading.Event().wait(0.02)
    finally:
        stop.set()
        for w in workers:
            w.join()
        service.shutdown()
    assert statuses and {s for s, _ in statuses} == {200}
    assert {b for _, b in statuses} == {"r1", "r2"}
    assert closed  # a replaced model is closed once its last request finished


def test_it_answers_500_not_a_broken_stream_when_a_model_overflows(tmp_path: Path) -> None:
    F.build_tensor_onnx(tmp_path / "model.onnx")
    service = LocalApi("127.0.0.1:0", poll_interval=0.01)
    service.set_predictor(Predictor(tmp_path, F.spec("tensor")), META)
    service.start()
    try:
        client = Client(service.address)
        status, body = client.call("POST", "/v1/predict", {"inputs": [{"x": [3e38] * 4}]})
        assert status == 500 and "non-finite" in body["error"]
        status, body = client.call("POST", "/v1/predict", {"inputs": [{"x": [1, 0, 0, 0]}]})
        assert status == 200 and body["outputs"][0]["y"][0][0] == pytest.approx(1.0)
    finally:
        service.shutdown()
