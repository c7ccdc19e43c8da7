"""The agent's update path under faults, against the live server through a
fault-injecting HTTP proxy (real sockets, real server, real agent code; the proxy
only cuts, corrupts or refuses what passes through it).

The agent's Updater runs in this process so each fault can be timed exactly; serving
is checked with the same Predictor the agent process uses.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from compression.models import ModelVersion
from fleet.models import Device
from fleet.security import director
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import _active, _derive, _publish, _text_model_zip, _updater

pytestmark = [pytest.mark.django_db(transaction=True)]


class FaultProxy:
    """Forwards to the live server; `mode` breaks the next payload download."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.mode, self.ranges = upstream, "", []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self, "GET")

            def do_POST(self) -> None:
                proxy.forward(self, "POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {
            k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")
        }
        is_payload = handler.path.endswith("/payload")
        if is_payload:
            self.ranges.append(handler.headers.get("Range"))
        if is_payload and self.mode == "503":
            self.mode = ""
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        request = urllib.request.Request(  # noqa: S310 - the live test server
            self.upstream + handler.path, data=body, method=method, headers=headers
        )
        try:
            response = urllib.request.urlopen(request, timeout=30)  # noqa: S310
        except urllib.error.HTTPError as exc:
            response = exc
        data = response.read()
        if is_payload and self.mode == "cut":
            self.mode = ""
            handler.send_response(response.status)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.connection.close()  # the connection drops halfway
            return
        if is_payload and self.mode == "flip":
            self.mode = ""
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        handler.send_response(response.status)
        for key, value in response.headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def proxy(live_server: Any) -> Iterator[FaultProxy]:
    proxy = FaultProxy(live_server.url)
    yield proxy
    proxy.close()


def test_the_agent_survives_network_faults_tampering_clock_skew_and_revocation(
    live_server: Any,
    celery_worker: Worker,
    alice_api: Any,
    proxy: FaultProxy,
    tmp_path: Path,
    settings: Any,
) -> None:
    from tinyfleet_agent._internal.client import RevokedError, ServerError
    from tinyfleet_agent.fleet import enroll
    from tinyfleet_agent.predictor import Predictor

    settings.DEVICE_POLL_INTERVAL = 1
    uploaded = upload(alice_api, _text_model_zip(tmp_path), name="faulty")
    wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
    parent = uploaded.json()["id"]
    first = _publish(_derive(alice_api, parent, "onnx-int8-dynamic"))
    second = _publish(_derive(alice_api, parent, "onnx-fp16"))

    group = alice_api.post("/api/v1/groups", {"name": "faults"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    state = tmp_path / "device"
    enroll(state, proxy.url, token, name="faulty-pi")
    device = Device.objects.get()
    updater = _updater(state, proxy.url)

    # Connection cut halfway through the download: the next try resumes with Range.
    director.assign(device, director_bundle(first))
    proxy.mode = "cut"
    with pytest.raises(ServerError):
        updater.check_once()
    assert _active(updater) is None
    outcome = updater.check_once()  # same desired state: no 304 hides it
    assert outcome == "installed", updater.failed
    assert proxy.ranges[-1] and proxy.ranges[-1].startswith("bytes=")
    assert _active(updater) == first

    # A flipped byte in transit: refused, reported, the first bundle keeps serving.
    director.assign(device, director_bundle(second))
    proxy.mode = "flip"
    assert updater.check_once() == "failed"
    assert "Tampered" in updater.failed[second]
    assert _active(updater) == first
    updater.flush_events()
    assert "Tampered" in Device.objects.get().state["last_error"]["reason"]

    # A 503 on the payload is transient: the next poll installs.
    third = _publish(_derive(alice_api, parent, "onnx-int8-dynamic", {"per_channel": False}))
    director.assign(device, director_bundle(third))
    proxy.mode = "503"
    with pytest.raises(ServerError):
        updater.check_once()
    assert updater.check_once() == "installed" and _active(updater) == third

    # A clock a year ahead sees expired metadata: updates freeze, serving goes on.
    skewed = _updater(state, proxy.url, clock=lambda: datetime.now(UTC) + timedelta(days=400))
    director.assign(device, director_bundle(first))
    assert skewed.check_once() == "frozen"
    assert _active(skewed) == third

    # Revoked: the server refuses the device at once; the model is still served.
    alice_api.post(f"/api/v1/devices/{device.pk}/revoke")
    with pytest.raises(RevokedError):
        updater.check_once()
    slot = updater.store.active()
    predictor = Predictor.from_slot(slot)
    assert len(predictor.predict(["still answering"])[0]["embedding"]) > 0

    # Server gone entirely: the agent's client fails cleanly, the slot stays loadable.
    offline = _updater(state, "http://127.0.0.1:9")
    with pytest.raises(ServerError):
        offline.check_once()
    assert _active(offline) == third


def director_bundle(bundle_id: str) -> Any:
    from fleet.models import Bundle

    return Bundle.objects.get(pk=bundle_id)
