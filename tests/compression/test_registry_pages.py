"""Registry pages: list with search/sort, detail pages, htmx fragments that stop polling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from compression.models import Job, ModelVersion
from tests.compression.helpers import upload
from tests.fixtures.tiny_models import build_tiny_bert_onnx

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(alice_api: Any, tmp_path: Path) -> dict[str, Any]:
    body: dict[str, Any] = upload(
        alice_api, build_tiny_bert_onnx(tmp_path / "t.onnx"), name="minilm"
    ).json()
    return body


def test_the_model_list_searches(client: Client, alice: Any, version: dict[str, Any]) -> None:
    client.force_login(alice)
    assert b"minilm" in client.get("/models/?q=mini").content
    assert b"minilm" not in client.get("/models/?q=zzz").content
    fragment = client.get("/models/?q=mini", HTTP_HX_REQUEST="true")
    assert b"<html" not in fragment.content and b"minilm" in fragment.content


def test_the_version_fragment_polls_until_inspection_finishes(
    client: Client, bob: Any, version: dict[str, Any]
) -> None:
    client.force_login(bob)
    url = f"/versions/{version['id']}/"
    page = client.get(url)
    assert page.status_code == 200 and b'hx-trigger="every 1s"' in page.content
    pending = client.get(url, HTTP_HX_REQUEST="true")
    assert pending.status_code == 200
    ModelVersion.objects.filter(pk=version["id"]).update(
        status="ready", inspection={"parameters": 1234, "inputs": [], "outputs": [], "ops": {}}
    )
    done = client.get(url, HTTP_HX_REQUEST="true")
    assert done.status_code == 286  # htmx stops polling
    assert b"1234" in done.content and b"every 1s" not in done.content


def test_the_model_page_shows_lineage(
    client: Client, alice: Any, alice_api: Any, version: dict[str, Any], tmp_path: Path
) -> None:
    child = upload(
        alice_api, build_tiny_bert_onnx(tmp_path / "c.onnx", hidden=16), name="minilm"
    ).json()
    ModelVersion.objects.filter(pk=child["id"]).update(parent_id=version["id"], recipe="onnx-int8")
    client.force_login(alice)
    page = client.get(f"/models/{version['model']}/").content.decode()
    assert "onnx-int8" in page and f"/versions/{version['id']}/" in page


def test_the_upload_page_accepts_a_plain_form_post(
    client: Client, alice: Any, tmp_path: Path
) -> None:
    client.force_login(alice)
    path = build_tiny_bert_onnx(tmp_path / "form.onnx")
    with path.open("rb") as handle:
        response = client.post(
            "/models/upload/", {"name": "form", "task": "tensor", "file": handle}
        )
    version = ModelVersion.objects.get(model__name="form")
    assert response.status_code == 302 and response["Location"] == f"/versions/{version.pk}/"


def test_the_upload_page_answers_xhr_errors_as_json(client: Client, alice: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(alice)
    response = client.post(
        "/models/upload/",
        {"name": "x", "task": "tensor", "file": SimpleUploadedFile("x.onnx", b"nonsense")},
        HTTP_ACCEPT="application/json",
    )
    assert response.status_code == 400 and response.json()["error"]


def test_the_jobs_page_stops_polling_when_all_jobs_finished(
    client: Client, bob: Any, version: dict[str, Any]
) -> None:
    client.force_login(bob)
    assert client.get("/jobs/", HTTP_HX_REQUEST="true").status_code == 200
    Job.objects.update(status="succeeded")
    assert client.get("/jobs/", HTTP_HX_REQUEST="true").status_code == 286


def test_a_viewer_cannot_delete_from_the_page(
    client: Client, bob: Any, version: dict[str, Any]
) -> None:
    client.force_login(bob)
    assert client.post(f"/versions/{version['id']}/delete/").status_code == 403
    assert ModelVersion.objects.filter(pk=version["id"]).exists()


def test_a_version_without_a_golden_set_offers_no_publish_button(
    client: Client, alice: Any, version: dict[str, Any]
) -> None:
    client.force_login(alice)
    ModelVersion.objects.filter(pk=version["id"]).update(status="ready")
    assert b"Publish as bundle" not in client.get(f"/versions/{version['id']}/").content
    ModelVersion.objects.filter(pk=version["id"]).update(golden_sha256="0" * 64)
    assert b"Publish as bundle" in client.get(f"/versions/{version['id']}/").content
