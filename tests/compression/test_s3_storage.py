"""S3 mode against moto's standalone server over real HTTP: uploads land in the bucket,
downloads are presigned redirects, and the worker inspects straight from S3."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from compression.models import ModelVersion
from tests.compression.helpers import upload
from tests.conftest import start_worker, stop_worker, wait_for
from tests.fixtures.tiny_models import build_tiny_bert_onnx

BUCKET = "tinyfleet-test"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_settings(settings: Any, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "TINYFLEET_S3_BUCKET": BUCKET,
        "TINYFLEET_S3_ENDPOINT_URL": moto_server,
        "TINYFLEET_S3_REGION": "us-east-1",
        **CREDS,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings.S3_BUCKET = BUCKET
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": BUCKET,
                "endpoint_url": moto_server,
                "region_name": "us-east-1",
                "access_key": "testing",
                "secret_key": "testing",
                "file_overwrite": False,
                "default_acl": None,
                "querystring_expire": 600,
            },
        },
    }
    return env


@pytest.mark.django_db(transaction=True)
def test_it_stores_inspects_and_serves_models_from_s3(
    s3_settings: dict[str, str], alice_api: Any, tmp_path: Path, moto_server: str
) -> None:
    model = build_tiny_bert_onnx(tmp_path / "s3.onnx")
    worker = start_worker(tmp_path, s3_settings)
    try:
        body = upload(alice_api, model).json()
        version = wait_for(
            lambda: (
                (v := ModelVersion.objects.get(pk=body["id"])).status in ("ready", "failed") and v
            )
        )
        assert version.status == "ready", (version.error, worker.log())
    finally:
        stop_worker(worker)
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    obj = s3.get_object(Bucket=BUCKET, Key=version.storage_key)["Body"].read()
    assert hashlib.sha256(obj).hexdigest() == body["sha256"]
    redirect = alice_api.get(f"/api/v1/versions/{version.pk}/file")
    assert redirect.status_code == 302
    assert "Signature" in redirect["Location"] or "X-Amz-Signature" in redirect["Location"]
    with urllib.request.urlopen(redirect["Location"], timeout=10) as response:  # noqa: S310
        assert response.read() == model.read_bytes()


@pytest.mark.django_db
def test_healthz_checks_s3_storage(s3_settings: dict[str, str], client: Any) -> None:
    body = client.get("/healthz").json()
    assert body["checks"]["storage"] == "ok" and body["storage"] == "s3"
