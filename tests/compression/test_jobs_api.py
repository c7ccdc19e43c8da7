"""Compression jobs through the API: validation before queueing, cancel, datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import Dataset, Job, ModelVersion
from tests.compression.helpers import upload
from tests.fixtures.tiny_models import build_tiny_bert_onnx, build_tiny_hf_dir, zip_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready_onnx(alice_api: Any, tmp_path: Path) -> dict[str, Any]:
    body: dict[str, Any] = upload(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx")).json()
    ModelVersion.objects.filter(pk=body["id"]).update(status="ready")
    Job.objects.filter(version_id=body["id"]).update(status="succeeded")
    return body


def _start(api: Any, **body: Any) -> Any:
    return api.post("/api/v1/jobs", body)


def test_it_lists_recipes_with_the_formats_they_apply_to(alice_api: Any) -> None:
    recipes = {r["name"]: r for r in alice_api.get("/api/v1/recipes").json()["items"]}
    assert recipes["export-onnx"]["input_formats"] == ["hf-dir"]
    assert "onnx" in recipes["onnx-int8-auto"]["input_formats"]
    assert recipes["onnx-int8-auto"]["recommended"] is True


def test_it_refuses_an_unknown_recipe(alice_api: Any, ready_onnx: dict[str, Any]) -> None:
    response = _start(alice_api, version=ready_onnx["id"], recipe="magic")
    assert response.status_code == 400
    assert "unknown recipe" in response.json()["error"]
    assert not Job.objects.filter(kind="compress").exists()


def test_it_refuses_a_recipe_that_does_not_apply_to_the_format(
    alice_api: Any, ready_onnx: dict[str, Any]
) -> None:
    response = _start(alice_api, version=ready_onnx["id"], recipe="export-onnx")
    assert response.status_code == 400
    assert "applies to hf-dir models, not 'onnx'" in response.json()["error"]


def test_it_refuses_a_version_that_is_not_ready(alice_api: Any, tmp_path: Path) -> None:
    pending = upload(alice_api, build_tiny_bert_onnx(tmp_path / "p.onnx")).json()
    response = _start(alice_api, version=pending["id"], recipe="onnx-int8-dynamic")
    assert response.status_code == 400
    assert "pending" in response.json()["error"]


def test_it_refuses_unknown_parameters(alice_api: Any, ready_onnx: dict[str, Any]) -> None:
    response = _start(
        alice_api, version=ready_onnx["id"], recipe="onnx-int8-dynamic", params={"bits": 3}
    )
    assert response.status_code == 400
    assert "unknown parameter" in response.json()["error"]


def test_static_int8_needs_a_calibration_set(alice_api: Any, ready_onnx: dict[str, Any]) -> None:
    response = _start(alice_api, version=ready_onnx["id"], recipe="onnx-int8-static")
    assert response.status_code == 400
    assert "calibration" in response.json()["error"]


def test_a_dataset_that_does_not_exist_is_not_found(
    alice_api: Any, ready_onnx: dict[str, Any]
) -> None:
    response = _start(
        alice_api, version=ready_onnx["id"], recipe="onnx-int8-auto", eval_dataset=987654
    )
    assert response.status_code == 404
    assert "evaluation dataset 987654 does not exist" in response.json()["error"]
    assert not Job.objects.filter(kind="compress").exists()


def test_a_viewer_cannot_start_jobs(bob_api: Any, ready_onnx: dict[str, Any]) -> None:
    assert _start(bob_api, version=ready_onnx["id"], recipe="onnx-int8-dynamic").status_code == 403


def test_it_refuses_the_same_job_twice_while_it_runs(
    alice_api: Any, ready_onnx: dict[str, Any]
) -> None:
    first = _start(alice_api, version=ready_onnx["id"], recipe="onnx-int8-dynamic")
    assert first.status_code == 201, first.content
    second = _start(alice_api, version=ready_onnx["id"], recipe="onnx-int8-dynamic")
    assert second.status_code == 409
    assert f"job {first.json()['id']}" in second.json()["error"]
    other = _start(alice_api, version=ready_onnx["id"], recipe="onnx-fp16")
    assert other.status_code == 201


def test_it_cancels_a_queued_job_once(alice_api: Any, ready_onnx: dict[str, Any]) -> None:
    job = _start(alice_api, version=ready_onnx["id"], recipe="onnx-fp16").json()
    cancelled = alice_api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = alice_api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409


def test_it_accepts_a_labelled_jsonl_dataset(alice_api: Any) -> None:
    lines = "\n".join(json.dumps({"text": f"sentence {i}", "label": i % 2}) for i in range(10))
    response = alice_api.post(
        "/api/v1/datasets",
        {"file": SimpleUploadedFile("eval.jsonl", lines.encode()), "name": "eval"},
    )
    assert response.status_code == 201, response.content
    assert (response.json()["rows"], response.json()["has_labels"]) == (10, True)


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("empty.jsonl", b"", "empty"),
        ("bad.jsonl", b"{not json}\n", "invalid dataset"),
        ("half.jsonl", b'{"text": "a", "label": 1}\n{"text": "b"}\n', "all or none"),
        ("data.txt", b"a,b\n", ".jsonl"),
        # .csv is sensor data (a stream): refused with the sensor reader's reason.
        ("data.csv", b"a,b\n", "invalid sensor data: data.csv: no data rows"),
    ],
)
def test_it_refuses_bad_datasets(alice_api: Any, filename: str, data: bytes, message: str) -> None:
    response = alice_api.post("/api/v1/datasets", {"file": SimpleUploadedFile(filename, data)})
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert not Dataset.objects.exists()


def test_it_refuses_mismatched_npz_tensors(alice_api: Any, tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, input_ids=np.zeros((4, 8), np.int64), attention_mask=np.zeros((3, 8), np.int64))
    response = alice_api.post(
        "/api/v1/datasets", {"file": SimpleUploadedFile("t.npz", path.read_bytes())}
    )
    assert response.status_code == 400
    assert not Dataset.objects.exists()


def test_export_applies_to_hugging_face_uploads(alice_api: Any, tmp_path: Path) -> None:
    hf = zip_dir(build_tiny_hf_dir(tmp_path / "hf"), tmp_path / "hf.zip")
    body = upload(alice_api, hf, name="hf").json()
    ModelVersion.objects.filter(pk=body["id"]).update(status="ready")
    response = _start(alice_api, version=body["id"], recipe="onnx-int8-dynamic")
    assert response.status_code == 400
    assert "applies to onnx" in response.json()["error"]
