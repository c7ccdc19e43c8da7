"""Low-confidence fallback: the local API marks, forwards (only when enabled) and counts.

Real parts: the local API over real sockets, a real ONNX classifier, and the fallback
endpoint is a real HTTP server on loopback in this test. Nothing is mocked.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tinyfleet_agent._internal.fallback import (
    FallbackForwarder,
    FallbackUrlError,
    check_fallback_url,
)
from tinyfleet_agent.localapi import LocalApi
from tinyfleet_agent.predictor import Predictor

from . import agent_fixtures as F

META = {"bundle": "intent-r1", "release": 1, "model": "intent", "version": "1.1"}


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Endpoint:
    """A fallback endpoint: records every request; `gate` holds answers until set."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.status = status
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append((dict(self.headers.items()), body))
                endpoint.gate.wait(30)
                self.send_response(endpoint.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/classify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()


def _predictor(tmp: Path, threshold: float | None) -> Predictor:
    F.write_tokenizer(tmp / "tokenizer.json")
    F.build_encoder_onnx(tmp / "model.onnx", "text-classification")
    return Predictor(tmp, F.spec("text-classification", confidence_threshold=threshold))


@pytest.fixture(scope="module")
def unsure(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    # A threshold of 0.99 puts every answer of the tiny 4-label model under it.
    return _predictor(tmp_path_factory.mktemp("unsure"), 0.99)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


def _api(predictor: Predictor, capacity: int = 64) -> LocalApi:
    api = LocalApi("127.0.0.1:0", poll_interval=0.01)
    api.fallback = FallbackForwarder(
        device_id="dev-1", count=api.telemetry.record_fallback, capacity=capacity
    )
    api.set_predictor(predictor, META)
    api.start()
    return api


def _predict(api: LocalApi, inputs: list[str]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{api.address}/v1/predict",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _counts(api: LocalApi) -> dict[str, int]:
    [stats] = api.telemetry.snapshot_and_reset()["bundles"]
    keys = ("low_confidence", "forwarded", "forward_failed", "forward_dropped")
    return {k: stats[k] for k in keys}


def test_it_sends_nothing_while_the_fallback_is_off(unsure: Predictor, endpoint: Endpoint) -> None:
    api = _api(unsure)
    try:
        answer = _predict(api, ["turn the lights on", "play some jazz"])
        assert [o["low_confidence"] for o in answer["outputs"]] == [True, True]
        assert "fallback" not in answer
        api.fallback.configure(endpoint.url)  # type: ignore[union-attr]
        api.fallback.configure(None)  # type: ignore[union-attr]  # and off again
        assert "fallback" not in _predict(api, ["dim the lamp"])
    finally:
        api.shutdown()
    assert endpoint.requests == []
    assert _counts(api) == {
        "low_confidence": 3,
        "forwarded": 0,
        "forward_failed": 0,
        "forward_dropped": 0,
    }


def test_it_forwards_low_confidence_inputs_without_holding_the_local_answer(
    unsure: Predictor, endpoint: Endpoint, tmp_path: Path
) -> None:
    api = _api(unsure)
    api.fallback.configure(endpoint.url)  # type: ignore[union-attr]
    endpoint.gate.clear()  # the endpoint hangs until the local answer is back
    try:
        answer = _predict(api, ["turn the lights on", "play some jazz"])
        assert answer["fallback"] == "queued" and len(answer["outputs"]) == 2
        wait_for(lambda: endpoint.requests, timeout=10)
        assert _counts(api)["forwarded"] == 0  # still in flight, held by the endpoint
        endpoint.gate.set()
        wait_for(lambda: api.telemetry._stats("intent-r1").fallback["forwarded"] == 2)
        sure = _api(_predictor(tmp_path, None))  # no threshold: nothing is low-confidence
        sure.fallback.configure(endpoint.url)  # type: ignore[union-attr]
        try:
            assert "fallback" not in _predict(sure, ["turn the lights on"])
        finally:
            sure.shutdown()
    finally:
        api.shutdown()
    [(headers, body)] = endpoint.requests
    assert body["inputs"] == ["turn the lights on", "play some jazz"]
    assert body["prediction_id"] == answer["prediction_id"] and body["bundle"] == "intent-r1"
    assert body["local_outputs"] == answer["outputs"]
    assert headers["X-Tinyfleet-Device"] == "dev-1"
    assert "Authorization" not in headers  # the device credential never leaves for it
    assert _counts(api)["forwarded"] == 2


def test_it_counts_failed_and_dropped_forwards(unsure: Predictor) -> None:
    failing = Endpoint(status=500)
    api = _api(unsure, capacity=1)
    try:
        api.fallback.configure(failing.url)  # type: ignore[union-attr]
        _predict(api, ["turn the lights on"])
        stats = api.telemetry._stats("intent-r1")
        wait_for(lambda: stats.fallback["forward_failed"] == 1)
        failing.gate.clear()  # the sender blocks on the next request...
        _predict(api, ["one"])
        wait_for(lambda: len(failing.requests) == 2)
        assert _predict(api, ["two"])["fallback"] == "queued"  # ...one slot in the queue
        assert _predict(api, ["three", "four"])["fallback"] == "dropped"
        failing.gate.set()
        wait_for(lambda: stats.fallback["forward_failed"] == 3)
    finally:
        api.shutdown()
        failing.close()
    counts = _counts(api)
    assert counts["forward_failed"] == 3 and counts["forward_dropped"] == 2
    assert counts["forwarded"] == 0 and counts["low_confidence"] == 5


@pytest.mark.parametrize(
    "url",
    [
        "http://fallback.example.com/classify",  # inputs in clear text over a network
        "http://10.0.0.5/classify",
        "ftp://127.0.0.1/x",
        "https://user:secret@fallback.example.com/",
        "https:///no-host",
        "",
    ],
)
def test_it_refuses_fallback_urls_that_would_expose_inputs(url: str) -> None:
    with pytest.raises(FallbackUrlError):
        check_fallback_url(url)
    forwarder = FallbackForwarder(device_id="d", count=lambda *_: None)
    forwarder.configure(url)
    assert forwarder.url is None


def test_it_accepts_https_and_loopback_http() -> None:
    for url in (
        "https://models.example.com/v1/classify",
        "http://127.0.0.1:9000/x",
        "http://[::1]/x",
    ):
        assert check_fallback_url(url) == url
