"""S3 mode against moto's standalone server over real HTTP: uploads land in the bucket,
downloads are presigned redirects, and the worker inspects straight from S3."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest

from compression.models import ModelVersion
from tests.compression.helpers import upload
from tests.conftest import start_worker, stop_worker, wait_for
from tests.fixtures.s3 import BUCKET
from tests.fixtures.tiny_models import build_tiny_bert_onnx


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
