"""Compression jobs end to end in a real Celery worker: derived versions with lineage,
fidelity and a golden set; converter failures; cancellation; no duplicates."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from onnx import TensorProto, helper

from compression.models import Job, ModelVersion
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.fixtures.tiny_models import build_tiny_bert_onnx

pytestmark = pytest.mark.django_db(transaction=True)


def _ready_version(api: Any, path: Path, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = upload(api, path, **kw).json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready")
    return body


def _finished_job(job_id: int, timeout: float = 120) -> Job:
    result: Job = wait_for(
        lambda: (j := Job.objects.get(pk=job_id)).is_finished and j, timeout=timeout
    )
    return result


def test_it_quantizes_to_a_derived_version_with_fidelity_and_golden_set(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    parent = _ready_version(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx", hidden=64))
    started = alice_api.post(
        "/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-int8-dynamic"}
    )
    assert started.status_code == 201, started.content
    job = _finished_job(started.json()["id"])
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    child = ModelVersion.objects.get(pk=job.result_version_id)
    assert child.parent_id == parent["id"] and child.recipe == "onnx-int8-dynamic"
    assert child.status == "ready" and child.format == "onnx"
    assert child.size_bytes < parent["size_bytes"]
    fidelity = child.metrics["fidelity"]
    assert 0.9 < fidelity["cosine_mean"] <= 1.0 + 1e-6
    assert child.metrics["evaluated_on"] == "synthetic tensors"
    bench = child.metrics["benchmark"]
    assert bench["latency_p50_ms"] > 0 and bench["peak_rss_mb"] > 0
    assert bench["throughput_items_per_s"] > 0
    # Metrics travel into the signed provenance: no worker scratch paths in them.
    assert str(settings.DATA_DIR) not in json.dumps(child.metrics)
    assert 0 < child.metrics["latency_ratio"] < 10
    assert ModelVersion.objects.get(pk=parent["id"]).metrics["benchmark"]["latency_p50_ms"] > 0
    assert (
        "DynamicQuantizeLinear" in child.inspection["ops"]
        or "MatMulInteger" in child.inspection["ops"]
    )
    assert child.golden_sha256 and default_storage.exists(child.golden_key)
    with default_storage.open(child.golden_key) as handle:
        golden = np.load(handle)
        assert int(bytes(golden["meta"]).decode().count("min_cosine")) == 1
    assert child.lineage_info["parent_chain"][0]["id"] == parent["id"]
    assert "onnxruntime" in child.lineage_info["libraries"]
    api_job = alice_api.get(f"/api/v1/jobs/{job.pk}").json()
    assert api_job["status"] == "succeeded" and api_job["result_version"] == child.pk
    assert api_job["progress"] == 1.0


def _model_the_converter_rejects(path: Path) -> Path:
    """Structurally fine (upload and inspection accept it), but onnx.checker refuses it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("NoSuchOperator", ["x"], ["y"])
    model = helper.make_model(
        helper.make_graph([node], "bad", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path.write_bytes(model.SerializeToString())
    return path


def test_a_model_the_converter_rejects_fails_the_job_with_its_message(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    parent = _ready_version(
        alice_api, _model_the_converter_rejects(tmp_path / "bad.onnx"), task="tensor"
    )
    versions_before = ModelVersion.objects.count()
    started = alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-fp16"})
    job = _finished_job(started.json()["id"])
    assert job.status == "failed"
    assert (
        "NoSuchOperator" in job.error
        or "No Op registered" in job.error
        or "checker" in job.error.lower()
    )
    assert ModelVersion.objects.count() == versions_before


def test_cancelling_a_queued_job_means_it_never_runs(
    alice_api: Any, tmp_path: Path, transactional_db: None
) -> None:
    from tests.conftest import start_worker, stop_worker

    worker = start_worker(tmp_path)
    try:
        parent = _ready_version(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx"))
    finally:
        stop_worker(worker)
    job = alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-fp16"}).json()
    assert alice_api.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    worker = start_worker(tmp_path, queue=worker.queue)
    try:
        import time

        time.sleep(4)
        assert Job.objects.get(pk=job["id"]).status == "cancelled"
        assert not ModelVersion.objects.filter(parent_id=parent["id"]).exists()
    finally:
        stop_worker(worker)


def test_running_the_same_recipe_again_reuses_identical_bytes(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    parent = _ready_version(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx"))
    first = _finished_job(
        alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-fp16"}).json()[
            "id"
        ]
    )
    second = _finished_job(
        alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-fp16"}).json()[
            "id"
        ]
    )
    assert first.status == second.status == "succeeded", (first.error, second.error)
    assert first.result_version_id == second.result_version_id
    assert ModelVersion.objects.filter(parent_id=parent["id"]).count() == 1


def test_fp16_output_is_smaller_and_keeps_float_io(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    parent = _ready_version(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx", hidden=64))
    job = _finished_job(
        alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-fp16"}).json()[
            "id"
        ]
    )
    assert job.status == "succeeded", job.error
    child = ModelVersion.objects.get(pk=job.result_version_id)
    assert child.size_bytes < 0.7 * parent["size_bytes"]
    assert child.inspection["outputs"][0]["dtype"] == "float32"
    with default_storage.open(child.storage_key) as handle:
        model = onnx.load_from_string(handle.read())
    assert any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)


def test_cancelling_a_running_job_stops_the_converter_and_keeps_the_worker(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    from tests.e2e.agent_helpers import _text_model_zip

    parent = _ready_version(alice_api, _text_model_zip(tmp_path))
    job = alice_api.post(
        "/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-int8-auto"}
    ).json()
    wait_for(lambda: Job.objects.get(pk=job["id"]).stage not in ("queued", "preparing"), 60, 0.05)
    response = alice_api.post(f"/api/v1/jobs/{job['id']}/cancel").json()
    assert response.get("status") == "cancelled", (response, Job.objects.get(pk=job["id"]).log)
    time.sleep(2)
    cancelled = Job.objects.get(pk=job["id"])
    assert cancelled.status == "cancelled" and cancelled.result_version_id is None
    assert not ModelVersion.objects.filter(parent_id=parent["id"]).exists()
    # The worker survived and takes the next job.
    follow_up = _finished_job(
        alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "onnx-fp16"}).json()[
            "id"
        ]
    )
    assert follow_up.status == "succeeded", follow_up.error


def test_export_onnx_from_a_hugging_face_upload_matches_pytorch(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    from tests.fixtures.tiny_models import build_tiny_hf_dir, zip_dir

    hf = zip_dir(build_tiny_hf_dir(tmp_path / "hf"), tmp_path / "hf.zip")
    parent = _ready_version(alice_api, hf, name="hf-embedder")
    job = _finished_job(
        alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "export-onnx"}).json()[
            "id"
        ],
        timeout=300,
    )
    assert job.status == "succeeded", (job.error, job.log)
    child = ModelVersion.objects.get(pk=job.result_version_id)
    assert child.format == "onnx" and child.parent_id == parent["id"]
    assert child.metrics["fidelity"]["cosine_mean"] > 0.9999  # against PyTorch itself
    assert child.metrics["evaluated_on"] == "built-in sentences"
    assert child.golden_sha256 and child.pipeline.get("pooling") == "mean"
