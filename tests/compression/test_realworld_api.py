"""The registry on exports we did not make, with a real Celery worker: the primary output
chosen at inspection and changed by the operator (API and page, audited), the warning
for a text model without tokenizer and attaching one (files or another version, in
lineage), and job failures as one sentence with the log behind a details toggle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import AuditEvent
from compression.models import Job, ModelVersion
from tests.compression.helpers import upload
from tests.compression.realworld_models import (
    POOLED,
    build_contrib_ops_onnx,
    build_four_output_onnx,
    write_tokenizer,
    zip_folder,
)
from tests.conftest import Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _ready(api: Any, path: Path, name: str = "st-export") -> ModelVersion:
    body = upload(api, path, name=name, task="text-embedding").json()
    version: ModelVersion = wait_for(
        lambda: (v := ModelVersion.objects.get(pk=body["id"])).status in ("ready", "failed") and v,
        timeout=120,
    )
    assert version.status == "ready", version.error
    return version


def _page(user: Any, version: ModelVersion) -> str:
    client = Client()
    client.force_login(user)
    return client.get(f"/versions/{version.pk}/").content.decode()


def test_it_measures_the_pooled_output_and_lets_the_operator_choose_another(
    celery_worker: Worker, alice: Any, alice_api: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    build_four_output_onnx(folder / "model.onnx")
    write_tokenizer(folder)
    version = _ready(alice_api, zip_folder(folder, tmp_path / "export.zip"))
    body = alice_api.get(f"/api/v1/versions/{version.pk}").json()
    assert body["primary_output"] == POOLED and body["warnings"] == []
    roles = [o["role"] for o in body["inspection"]["outputs"]]
    assert roles == ["echo", "mask", "token-states", "pooled"]
    page = _page(alice, version)
    assert 'data-testid="primary-output"' in page and "echo" in page

    refused = alice_api.post(
        f"/api/v1/versions/{version.pk}/primary-output", {"output": "onnx::Identity_7"}
    )
    assert refused.status_code == 400 and "echo" in refused.json()["error"]
    changed = alice_api.post(
        f"/api/v1/versions/{version.pk}/primary-output", {"output": "last_hidden_state"}
    )
    assert changed.status_code == 200 and changed.json()["primary_output"] == "last_hidden_state"
    event = AuditEvent.objects.get(action="version.primary_output")
    assert event.detail == {"output": "last_hidden_state", "previous": POOLED}

    job = alice_api.post("/api/v1/jobs", {"version": version.pk, "recipe": "onnx-int8-dynamic"})
    done = wait_for(lambda: (j := Job.objects.get(pk=job.json()["id"])).is_finished and j, 180)
    assert done.status == "succeeded", (done.error, done.log)
    child = ModelVersion.objects.get(pk=done.result_version_id)
    assert child.primary_output == "last_hidden_state"
    assert child.metrics["fidelity"]["output"] == "last_hidden_state"
    assert child.metrics["fidelity"]["measured"] is True


def test_a_graph_with_onnxruntime_contrib_ops_is_inspected_and_quantized(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    """An export fused by onnxruntime's transformer optimizer (com.microsoft ops) is
    inspected with its parameters and contrib ops, and onnx-int8-auto measures it and
    keeps the fused ops (onnxruntime on the device runs them)."""
    folder = tmp_path / "fused"
    build_contrib_ops_onnx(folder / "model.onnx")
    write_tokenizer(folder)
    version = _ready(alice_api, zip_folder(folder, tmp_path / "fused.zip"), name="fused")
    inspection = version.inspection
    assert inspection["opset_imports"]["com.microsoft"] == 1
    assert inspection["ops"]["SkipLayerNormalization"] >= 4 and inspection["ops"]["BiasGelu"] == 2
    assert inspection["parameters"] > 30_000
    # Tiny, so no recipe is recommended (int8 would save under 0.1 MB); the operator
    # may still choose the accuracy-aware int8 recipe, which must cope with the graph.
    assert inspection["recommendation"]["recipe"] is None

    small = {"eval_samples": 40, "heldout_samples": 20, "calibration_samples": 16}
    job = alice_api.post(
        "/api/v1/jobs",
        {
            "version": version.pk,
            "recipe": "onnx-int8-auto",
            "params": {**small, "latency_rounds": 2},
        },
    )
    assert job.status_code == 201, job.content
    done = wait_for(lambda: (j := Job.objects.get(pk=job.json()["id"])).is_finished and j, 300)
    assert done.status == "succeeded", (done.error, done.log)
    child = ModelVersion.objects.get(pk=done.result_version_id)
    fidelity = child.metrics["fidelity"]
    assert fidelity["measured"] is True and fidelity["cosine_mean"] > 0.99, fidelity
    ops = child.inspection["ops"]
    assert ops.get("SkipLayerNormalization") and ops.get("BiasGelu"), ops
    assert ops.get("MatMulInteger") or ops.get("DynamicQuantizeMatMul"), ops


def test_it_warns_about_a_missing_tokenizer_and_attaches_one(
    celery_worker: Worker, alice: Any, alice_api: Any, tmp_path: Path
) -> None:
    bare = _ready(alice_api, build_four_output_onnx(tmp_path / "model.onnx"))
    body = alice_api.get(f"/api/v1/versions/{bare.pk}").json()
    assert any("no tokenizer" in w for w in body["warnings"])
    assert 'data-testid="attach-tokenizer"' in _page(alice, bare)

    tokenizer = write_tokenizer(tmp_path / "tok")
    files = {"files": SimpleUploadedFile("tokenizer.json", tokenizer.read_bytes())}
    attached = alice_api.post(f"/api/v1/versions/{bare.pk}/tokenizer", files)
    assert attached.status_code == 201, attached.content
    child = _ready_by_id(attached.json()["id"])
    assert child.parent_id == bare.pk and child.recipe == "attach-tokenizer"
    assert set(child.lineage_info["tokenizer"]["uploaded"]) == {"tokenizer.json"}
    assert child.warnings() == [] and child.primary_output == POOLED

    # Another upload of the same graph takes the tokenizer from that version instead.
    other = _ready(alice_api, build_four_output_onnx(tmp_path / "again.onnx", hidden=48))
    # A form field (multipart), like the files.
    taken = alice_api.client.post(
        f"/api/v1/versions/{other.pk}/tokenizer", {"from_version": str(child.pk)}
    )
    assert taken.status_code == 201, taken.content
    second = _ready_by_id(taken.json()["id"])
    assert second.lineage_info["tokenizer"]["from_version"]["id"] == child.pk

    wrong = alice_api.post(
        f"/api/v1/versions/{bare.pk}/tokenizer",
        {"files": SimpleUploadedFile("model.onnx", b"not a tokenizer")},
    )
    assert wrong.status_code == 400 and "not a tokenizer file" in wrong.json()["error"]


def _ready_by_id(version_id: int) -> ModelVersion:
    version: ModelVersion = wait_for(
        lambda: (v := ModelVersion.objects.get(pk=version_id)).status in ("ready", "failed") and v,
        timeout=120,
    )
    assert version.status == "ready", version.error
    return version


def test_it_refuses_to_requantize_naming_the_fp32_original(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    build_four_output_onnx(folder / "model.onnx", hidden=64)
    write_tokenizer(folder)
    version = _ready(alice_api, zip_folder(folder, tmp_path / "export.zip"))
    first = alice_api.post("/api/v1/jobs", {"version": version.pk, "recipe": "onnx-int8-dynamic"})
    done = wait_for(lambda: (j := Job.objects.get(pk=first.json()["id"])).is_finished and j, 180)
    int8 = ModelVersion.objects.get(pk=done.result_version_id)
    assert int8.inspection["quantized"].startswith("int8 operators")
    again = alice_api.post("/api/v1/jobs", {"version": int8.pk, "recipe": "onnx-int8-auto"})
    assert again.status_code == 400
    assert again.json()["error"].endswith(
        f"run onnx-int8-auto on v{version.number}, its fp32 original."
    )
    assert Job.objects.filter(version=int8).count() == 0  # nothing queued


def test_it_says_what_to_change_when_a_job_fails_and_keeps_the_log_behind_details(
    celery_worker: Worker, alice: Any, alice_api: Any, tmp_path: Path
) -> None:
    # A graph without tokenizer and no .npz calibration set: int8-auto cannot calibrate.
    version = _ready(alice_api, build_four_output_onnx(tmp_path / "model.onnx"))
    started = alice_api.post("/api/v1/jobs", {"version": version.pk, "recipe": "onnx-int8-auto"})
    failed = wait_for(
        lambda: (j := Job.objects.get(pk=started.json()["id"])).is_finished and j, 180
    )
    assert failed.status == "failed"
    assert failed.error == "a model without a tokenizer needs an .npz calibration set", failed.error
    assert "Traceback" in failed.log  # the details are kept, in the log
    client = Client()
    client.force_login(alice)
    page = client.get(f"/jobs/{failed.pk}/").content.decode()
    before_details = page.split('data-testid="job-details"')[0]
    assert "needs an .npz calibration set" in before_details
    assert "Traceback" not in before_details and "<details" in page
