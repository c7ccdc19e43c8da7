"""Registry REST API: uploads, listing, download, delete, and every bad input refused
with a clear 4xx that leaves nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import AuditEvent
from compression.models import Job, ModelVersion
from compression.storage import content_key
from tests.compression.helpers import (
    assert_nothing_stored,
    model_count,
    temp_files,
    upload,
    zip_bytes,
)
from tests.fixtures.tiny_models import build_tiny_bert_onnx

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return build_tiny_bert_onnx(tmp_path / "tiny.onnx")


def _refused(api: Any, data: bytes, filename: str, status: int = 400) -> str:
    before = temp_files()
    response = api.post(
        "/api/v1/models",
        {"file": SimpleUploadedFile(filename, data), "name": "bad", "task": "tensor"},
    )
    assert response.status_code == status, response.content
    assert_nothing_stored(data, filename, before)
    assert model_count() == 0
    return str(response.json()["error"])


def test_it_registers_an_uploaded_onnx_as_a_pending_version(
    alice_api: Any, tiny_onnx: Path
) -> None:
    response = upload(alice_api, tiny_onnx)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending"
    assert body["format"] == "onnx"
    assert body["sha256"] == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert body["size_bytes"] == tiny_onnx.stat().st_size
    assert body["parent"] is None
    assert Job.objects.get(pk=body["job"]).kind == "inspect"
    assert default_storage.exists(content_key(body["sha256"], "tiny.onnx"))
    assert AuditEvent.objects.filter(action="version.upload", actor__username="alice").exists()


def test_it_numbers_versions_of_a_model(alice_api: Any, tmp_path: Path) -> None:
    first = upload(alice_api, build_tiny_bert_onnx(tmp_path / "a.onnx", hidden=16))
    second = upload(alice_api, build_tiny_bert_onnx(tmp_path / "b.onnx", hidden=32))
    assert (first.json()["number"], second.json()["number"]) == (1, 2)
    listing = alice_api.get("/api/v1/models").json()
    assert listing["count"] == 1
    assert [v["number"] for v in listing["items"][0]["versions"]] == [2, 1]


def test_it_stores_the_same_file_once_and_says_so(alice_api: Any, tiny_onnx: Path) -> None:
    first = upload(alice_api, tiny_onnx)
    again = upload(alice_api, tiny_onnx)
    assert again.status_code == 409
    assert "already version 1" in again.json()["error"]
    assert again.json()["version"]["id"] == first.json()["id"]
    assert ModelVersion.objects.count() == 1


def test_it_shares_bytes_between_models_without_copying(alice_api: Any, tiny_onnx: Path) -> None:
    a = upload(alice_api, tiny_onnx, name="one").json()
    b = upload(alice_api, tiny_onnx, name="two").json()
    assert a["sha256"] == b["sha256"]
    assert (
        ModelVersion.objects.get(pk=a["id"]).storage_key
        == ModelVersion.objects.get(pk=b["id"]).storage_key
    )


def test_it_refuses_an_empty_file(alice_api: Any) -> None:
    assert "empty" in _refused(alice_api, b"", "model.onnx")


def test_it_refuses_random_bytes_named_onnx(alice_api: Any) -> None:
    message = _refused(alice_api, bytes(range(256)) * 64, "model.onnx")
    assert "onnx" in message.lower()


def test_it_refuses_a_truncated_onnx(alice_api: Any, tiny_onnx: Path) -> None:
    data = tiny_onnx.read_bytes()
    assert "onnx" in _refused(alice_api, data[: len(data) // 2], "model.onnx").lower()


def test_it_refuses_onnx_whose_external_data_leaves_its_folder(
    alice_api: Any, tmp_path: Path
) -> None:
    model = build_tiny_bert_onnx(tmp_path / "m" / "model.onnx", external_data=True)
    raw = model.read_bytes().replace(b"model.onnx.data", b"../../etc/pwd")
    data = zip_bytes({"model.onnx": raw, "model.onnx.data": b"\0" * 16})
    message = _refused(alice_api, data, "model.zip")
    assert "external data" in message.lower() or "outside" in message.lower()


def test_it_refuses_a_zip_with_dot_dot_entries(alice_api: Any, tiny_onnx: Path) -> None:
    data = zip_bytes({"model.onnx": tiny_onnx.read_bytes(), "../evil.txt": b"x"})
    assert ".." in _refused(alice_api, data, "model.zip")


def test_it_refuses_a_zip_bomb(alice_api: Any) -> None:
    data = zip_bytes({"config.json": b"{}", "model.safetensors": b"\0" * (64 * 1024**2)})
    message = _refused(alice_api, data, "model.zip")
    assert "ratio" in message.lower() or "bomb" in message.lower()


def test_it_refuses_a_pickle_and_says_what_to_upload(alice_api: Any) -> None:
    message = _refused(alice_api, b"\x80\x04\x95" + b"\0" * 64, "pytorch_model.bin")
    assert "safetensors" in message or "ONNX" in message


def test_it_refuses_an_upload_over_the_cap(alice_api: Any, settings: Any) -> None:
    settings.MAX_UPLOAD_SIZE = 4096
    assert "size limit" in _refused(alice_api, b"\0" * 8192, "model.onnx", status=413)


def test_it_refuses_a_declared_body_over_the_cap_before_reading(
    alice_api: Any, settings: Any
) -> None:
    settings.MAX_UPLOAD_SIZE = 1024
    response = alice_api.client.generic(
        "POST",
        "/api/v1/models",
        b"",
        CONTENT_LENGTH=str(50 * 1024**2),
        content_type="multipart/form-data; boundary=x",
    )
    assert response.status_code == 413
    assert "size limit" in response.json()["error"]


def test_it_refuses_an_unknown_task(alice_api: Any, tiny_onnx: Path) -> None:
    response = upload(alice_api, tiny_onnx, task="summarise")
    assert response.status_code == 400
    assert "task must be one of" in response.json()["error"]
    assert model_count() == 0


def test_it_refuses_uploads_from_a_viewer(bob_api: Any, tiny_onnx: Path) -> None:
    response = upload(bob_api, tiny_onnx)
    assert response.status_code == 403
    assert "operator" in response.json()["error"]
    assert model_count() == 0


def test_it_requires_a_token(client: Any) -> None:
    response = client.get("/api/v1/models")
    assert response.status_code == 401
    assert "token" in response.json()["error"]


def test_it_refuses_a_revoked_token(alice_api: Any) -> None:
    from accounts.models import ApiToken

    ApiToken.objects.get(user=alice_api.user).revoke()
    assert alice_api.get("/api/v1/models").status_code == 401


def test_it_refuses_a_made_up_token(client: Any) -> None:
    response = client.get("/api/v1/models", HTTP_AUTHORIZATION="Bearer tf_not-a-real-token")
    assert response.status_code == 401


def test_it_searches_and_sorts_models(alice_api: Any, tmp_path: Path) -> None:
    for i, name in enumerate(["zeta-embedder", "alpha-embedder", "beta-classifier"]):
        upload(
            alice_api, build_tiny_bert_onnx(tmp_path / f"{i}.onnx", hidden=8 * (i + 1)), name=name
        )
    names = [
        m["name"] for m in alice_api.get("/api/v1/models?q=embedder&sort=-name").json()["items"]
    ]
    assert names == ["zeta-embedder", "alpha-embedder"]
    assert alice_api.get("/api/v1/models?sort=bogus").status_code == 400


def test_it_downloads_the_exact_bytes(alice_api: Any, tiny_onnx: Path) -> None:
    version = upload(alice_api, tiny_onnx).json()
    response = alice_api.get(f"/api/v1/versions/{version['id']}/file")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == tiny_onnx.read_bytes()


def test_it_answers_404_as_json(alice_api: Any) -> None:
    response = alice_api.get("/api/v1/versions/999999")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


def test_it_deletes_an_unused_version_and_its_bytes(alice_api: Any, tiny_onnx: Path) -> None:
    version = upload(alice_api, tiny_onnx).json()
    Job.objects.filter(version_id=version["id"]).update(status="succeeded")
    response = alice_api.delete(f"/api/v1/versions/{version['id']}")
    assert response.status_code == 204
    assert not ModelVersion.objects.filter(pk=version["id"]).exists()
    assert not default_storage.exists(content_key(version["sha256"], "tiny.onnx"))


def test_it_refuses_to_delete_a_version_others_derive_from(
    alice_api: Any, tiny_onnx: Path, tmp_path: Path
) -> None:
    parent = upload(alice_api, tiny_onnx).json()
    child = upload(alice_api, build_tiny_bert_onnx(tmp_path / "c.onnx", hidden=16)).json()
    ModelVersion.objects.filter(pk=child["id"]).update(parent_id=parent["id"])
    Job.objects.update(status="succeeded")
    response = alice_api.delete(f"/api/v1/versions/{parent['id']}")
    assert response.status_code == 409
    assert "derived" in response.json()["error"]


def test_it_refuses_deletion_by_a_viewer(alice_api: Any, bob_api: Any, tiny_onnx: Path) -> None:
    version = upload(alice_api, tiny_onnx).json()
    assert bob_api.delete(f"/api/v1/versions/{version['id']}").status_code == 403
    assert ModelVersion.objects.filter(pk=version["id"]).exists()


def test_it_keeps_a_versions_identity_immutable(alice_api: Any, tiny_onnx: Path) -> None:
    version = ModelVersion.objects.get(pk=upload(alice_api, tiny_onnx).json()["id"])
    version.sha256 = "0" * 64
    with pytest.raises(ValueError, match="immutable"):
        version.save()


def test_it_publishes_an_openapi_document_with_the_core_routes(client: Any) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    for route in (
        "/api/v1/models",
        "/api/v1/versions/{version_id}",
        "/api/v1/versions/{version_id}/file",
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
    ):
        assert route in spec["paths"], route
    docs = client.get("/api/v1/docs")
    assert docs.status_code == 200
    assert b"cdn" not in docs.content.lower()


def test_it_reads_no_upload_bytes_from_a_viewer(bob_api: Any, tiny_onnx: Path) -> None:
    before = temp_files()
    response = upload(bob_api, tiny_onnx)
    assert response.status_code == 403
    assert temp_files() == before  # refused before the body was spooled to disk


def test_a_missing_token_on_a_post_is_401_not_a_csrf_error(client: Any) -> None:
    response = client.post("/api/v1/tokens", {"name": "x"}, content_type="application/json")
    assert response.status_code == 401
    assert "token" in response.json()["error"]
