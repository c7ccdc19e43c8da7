"""Bundles stored on S3 reach devices: the payload route redirects to a presigned URL signed
for the public object-store endpoint, and the agent follows it without its credential.

Object storage is moto's standalone server (real HTTP, its own process) behind
`DoubleAuthProxy`, which refuses a request carrying both a query signature and an
Authorization header exactly like AWS does (moto alone accepts it). The server talks to
moto directly (the internal endpoint); devices only know the proxy (the public endpoint).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from tinyfleet_agent._internal.client import DeviceClient

from compression.models import ModelVersion
from fleet.models import Device
from tests.compression.helpers import upload
from tests.conftest import start_worker, stop_worker, wait_for
from tests.e2e.agent_helpers import Agent, _derive, _publish, _text_model_zip
from tests.e2e.s3 import DoubleAuthProxy, MotoServer, s3_environment, s3_storage_settings

BUCKET = "tinyfleet-payloads"


@pytest.fixture(scope="module")
def object_store() -> Iterator[tuple[MotoServer, DoubleAuthProxy]]:
    moto = MotoServer()
    moto.create_bucket(BUCKET)
    proxy = DoubleAuthProxy(moto.url)
    yield moto, proxy
    proxy.stop()
    moto.stop()


@pytest.fixture
def s3_public(settings: Any, object_store: tuple[MotoServer, DoubleAuthProxy]) -> dict[str, str]:
    """Artifacts on moto (internal endpoint); presigned URLs for the proxy (public one)."""
    moto, proxy = object_store
    settings.S3_BUCKET = BUCKET
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage_settings(BUCKET, moto.url, proxy.url),
    }
    return s3_environment(BUCKET, moto.url, proxy.url)


class RedirectingServer:
    """Stands in for the payload route: records headers, answers 302 to `location`."""

    def __init__(self, location: str) -> None:
        self.location, self.headers = location, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.headers.append(dict(self.headers))
                self.send_response(302)
                self.send_header("Location", outer.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_it_follows_a_presigned_redirect_without_sending_the_device_credential(
    object_store: tuple[MotoServer, DoubleAuthProxy], tmp_path: Path
) -> None:
    moto, proxy = object_store
    data = b"ciphertext " * 50_000
    moto.client().put_object(Bucket=BUCKET, Key="bundles/b1.enc", Body=data)
    presigned = moto.client(proxy.url).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "bundles/b1.enc"}, ExpiresIn=60
    )
    # The rule itself: what the agent used to send (credential copied onto the redirect).
    refused = proxy.seen[:]
    try:
        request = urllib.request.Request(  # noqa: S310 - local test server
            presigned, headers={"Authorization": "Bearer leak"}
        )
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - local test server
        raise AssertionError("the proxy accepted a double-authenticated request")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and b"Only one auth mechanism" in exc.read()
    assert len(proxy.seen) == len(refused) + 1

    server = RedirectingServer(presigned)
    client = DeviceClient(server.url, "device-secret-credential")
    dst = tmp_path / "b1.enc"
    client.download("b1", dst, len(data), hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data
    assert server.headers[0]["Authorization"] == "Bearer device-secret-credential"
    reached = proxy.seen[-1]
    assert reached.presigned and reached.status == 200 and reached.authorization is None


def test_it_resumes_a_download_through_the_redirect_with_range(
    object_store: tuple[MotoServer, DoubleAuthProxy], tmp_path: Path
) -> None:
    moto, proxy = object_store
    data = bytes(range(256)) * 8192
    moto.client().put_object(Bucket=BUCKET, Key="bundles/b2.enc", Body=data)
    presigned = moto.client(proxy.url).generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "bundles/b2.enc"}, ExpiresIn=60
    )
    dst = tmp_path / "b2.enc"
    (tmp_path / "b2.enc.part").write_bytes(data[:100_000])
    client = DeviceClient(RedirectingServer(presigned).url, "device-secret-credential")
    client.download("b2", dst, len(data), hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data
    assert proxy.seen[-1].authorization is None and proxy.seen[-1].status == 206


@pytest.mark.django_db
def test_it_signs_download_urls_for_the_public_endpoint(
    s3_public: dict[str, str], object_store: tuple[MotoServer, DoubleAuthProxy]
) -> None:
    moto, proxy = object_store
    key = default_storage.save("models/aa/public.bin", ContentFile(b"weights"))
    # Stored through the internal endpoint: moto has it.
    assert moto.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"weights"
    url = default_storage.url(key)
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == proxy.url
    assert "X-Amz-Signature" in urllib.parse.parse_qs(parts.query)
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local proxy
        assert response.read() == b"weights"


@pytest.mark.django_db(transaction=True)
def test_a_real_agent_installs_a_bundle_whose_payload_is_on_s3(
    live_server: Any,
    alice_api: Any,
    tmp_path: Path,
    settings: Any,
    s3_public: dict[str, str],
    object_store: tuple[MotoServer, DoubleAuthProxy],
) -> None:
    _, proxy = object_store
    settings.DEVICE_POLL_INTERVAL = 1
    settings.SITE_URL = live_server.url
    worker = start_worker(tmp_path, s3_public)
    agent = Agent("s3-agent", tmp_path / "s3-agent")
    try:
        uploaded = upload(alice_api, _text_model_zip(tmp_path), name="tiny-embedder")
        assert uploaded.status_code == 201, uploaded.content
        wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
        bundle = _publish(_derive(alice_api, uploaded.json()["id"], "onnx-int8-dynamic"))
        group = alice_api.post("/api/v1/groups", {"name": "s3", "selector": "site=s3"}).json()
        token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()
        enrolled = agent.cli(
            "enroll", "--server", live_server.url, "--token", token["token"], "--label", "site=s3"
        )
        device_id = json.loads(enrolled.stdout)["device_id"]
        agent.start()
        rollout = alice_api.post(
            "/api/v1/rollouts",
            {"bundle": bundle, "group": group["id"], "waves": [100], "soak_seconds": 0},
        )
        assert rollout.status_code == 201, rollout.content
        try:
            wait_for(lambda: agent.serving() == bundle, timeout=90, interval=0.5)
        except AssertionError:
            raise AssertionError(agent.log()) from None
        answer = agent.post("/v1/predict", {"inputs": ["the pump is vibrating"]})
        assert answer["bundle"] == bundle
    finally:
        agent.stop()
        stop_worker(worker)
    payload_gets = [s for s in proxy.seen if s.presigned and "/bundles/" in s.path]
    assert payload_gets and all(s.status in (200, 206) for s in payload_gets), payload_gets
    assert all(s.authorization is None for s in proxy.seen if s.presigned)
    assert Device.objects.get(pk=device_id).state.get("last_error") in (None, "")
