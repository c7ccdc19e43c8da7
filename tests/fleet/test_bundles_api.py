"""The operator bundles API: roles, bad input, shapes, downloads and export."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage

from accounts.models import AuditEvent
from compression.models import VersionStatus
from fleet.models import Bundle
from fleet.security import director
from tests.fleet.publish_helpers import make_device, make_version, onnx_files, publish_now


def bundle_files() -> list[str]:
    try:
        return default_storage.listdir("bundles")[1]
    except FileNotFoundError:
        return []


def test_viewer_cannot_publish(db: None, bob_api: Any, tmp_path: Path) -> None:
    version = make_version(onnx_files(tmp_path))
    response = bob_api.post("/api/v1/bundles", {"version": version.pk})
    assert response.status_code == 403
    assert response.json() == {"error": "this needs the operator role"}
    assert not Bundle.objects.exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("unknown", "version 999999 does not exist"),
        ("not-ready", "is not ready (status inspecting)"),
        ("no-golden", "has no golden set, and devices must self-test"),
        ("hf-dir", "export it to ONNX or TFLite first"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_nothing_stored(
    db: None, alice_api: Any, tmp_path: Path, kind: str, message: str
) -> None:
    before = bundle_files()
    version_id = 999999
    if kind != "unknown":
        version = make_version(
            onnx_files(tmp_path),
            golden=kind != "no-golden",
            status=VersionStatus.INSPECTING if kind == "not-ready" else VersionStatus.READY,
            fmt="hf-dir" if kind == "hf-dir" else "onnx",
        )
        version_id = version.pk
    response = alice_api.post("/api/v1/bundles", {"version": version_id})
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Bundle.objects.exists() and bundle_files() == before
    assert alice_api.post("/api/v1/bundles", {"version": "x"}).status_code == 400


def test_it_lists_and_shows_bundles_with_the_signed_record(
    db: None, alice_api: Any, bob_api: Any, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)), alice_api.user)
    listed = bob_api.get("/api/v1/bundles").json()
    assert listed["count"] == 1 and listed["items"][0]["id"] == bundle.pk
    assert bob_api.get("/api/v1/bundles?status=failed").json()["count"] == 0
    assert bob_api.get("/api/v1/bundles?status=nope").status_code == 400
    detail = bob_api.get(f"/api/v1/bundles/{bundle.pk}").json()
    assert detail["status"] == "published" and detail["release"] == 1
    assert detail["created_by"] == "alice" and detail["model_name"] == "minilm intent"
    assert detail["record"]["bundle_id"] == bundle.pk
    signed = detail["signed"]
    assert signed["target"]["custom"]["tinyfleet"]["record"] == detail["record"]
    assert signed["target"]["length"] == detail["size_bytes"]
    assert signed["target"]["hashes"]["sha256"] == detail["ciphertext_sha256"]
    assert len(signed["keyids"]) == 1
    assert bob_api.get("/api/v1/bundles/b-nope").status_code == 404


def test_publishing_twice_returns_the_existing_bundle(
    db: None, alice_api: Any, tmp_path: Path
) -> None:
    version = make_version(onnx_files(tmp_path))
    first = alice_api.post("/api/v1/bundles", {"version": version.pk})
    second = alice_api.post("/api/v1/bundles", {"version": version.pk})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert Bundle.objects.count() == 1
    assert AuditEvent.objects.filter(action="bundle.publish").count() == 1


def test_ciphertext_download_supports_range_and_needs_an_operator(
    db: None, alice_api: Any, bob_api: Any, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    url = f"/api/v1/bundles/{bundle.pk}/ciphertext"
    assert bob_api.get(url).status_code == 403
    whole = alice_api.get(url)
    assert whole.status_code == 200 and whole["Accept-Ranges"] == "bytes"
    data = b"".join(whole.streaming_content)
    assert len(data) == bundle.ciphertext_size
    part = alice_api.get(url, HTTP_RANGE="bytes=100-")
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert b"".join(part.streaming_content) == data[100:]
    tail = alice_api.get(url, HTTP_RANGE="bytes=-10")
    assert b"".join(tail.streaming_content) == data[-10:]
    bad = alice_api.get(url, HTTP_RANGE=f"bytes={len(data)}-")
    assert bad.status_code == 416 and bad["Content-Range"] == f"bytes */{len(data)}"


def test_export_holds_root_chains_metadata_and_ciphertext(
    db: None, alice_api: Any, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    dev = make_device()
    response = alice_api.get(f"/api/v1/bundles/{bundle.pk}/export?device={dev.id}")
    assert response.status_code == 400 and "not the current assignment" in response.json()["error"]
    director.assign(dev.device, bundle)
    response = alice_api.get(f"/api/v1/bundles/{bundle.pk}/export?device={dev.id}")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(b"".join(response.streaming_content))) as tar:
        names = tar.getnames()
        ciphertext = tar.extractfile(bundle.target_name).read()  # type: ignore[union-attr]
    assert names[0] == "tinyfleet-export.json"
    assert {
        "metadata/image/1.root.json",
        "metadata/director/1.root.json",
        "metadata/image/timestamp.json",
        "metadata/image/snapshot.json",
        "metadata/image/targets.json",
        "metadata/director/targets.json",
        bundle.target_name,
    } <= set(names)
    assert len(ciphertext) == bundle.ciphertext_size
    assert alice_api.get(f"/api/v1/bundles/{bundle.pk}/export?device=x").status_code == 400


def test_on_s3_downloads_are_presigned_redirects(
    db: None, s3_settings: Any, alice_api: Any, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    response = alice_api.get(f"/api/v1/bundles/{bundle.pk}/ciphertext")
    assert response.status_code == 302
    with urllib.request.urlopen(response["Location"], timeout=10) as body:  # noqa: S310
        assert hashlib.sha256(body.read()).hexdigest() == bundle.ciphertext_sha256
    dev = make_device()
    director.assign(dev.device, bundle)
    payload = dev.client().get(f"/api/device/v1/bundles/{bundle.pk}/payload")
    assert payload.status_code == 302 and "Signature" in payload["Location"]
    export = alice_api.get(f"/api/v1/bundles/{bundle.pk}/export")
    with tarfile.open(fileobj=io.BytesIO(b"".join(export.streaming_content))) as tar:
        assert tar.getmember(bundle.target_name).size == bundle.ciphertext_size
