"""`tflite` jobs end to end: the API, PostgreSQL, Redis and a real Celery worker process
that runs litert-torch and ai-edge-quantizer in a converter subprocess, then evaluates
against PyTorch and benchmarks on ai-edge-litert in fresh processes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.storage import default_storage

from compression.models import Job, ModelVersion
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.fixtures.tiny_models import build_tiny_bert_onnx, build_tiny_hf_dir, zip_dir

pytestmark = pytest.mark.django_db(transaction=True)


def _ready_hf_version(api: Any, folder: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    archive = zip_dir(folder, tmp_path / f"{name}.zip")
    body: dict[str, Any] = upload(api, archive, name=name).json()
    wait_for(lambda: ModelVersion.objects.get(pk=body["id"]).status == "ready", timeout=120)
    return body


def _watch(api: Any, job_id: int, timeout: float = 300) -> tuple[dict[str, Any], list[Any]]:
    """Poll the job API as the browser does; return the final body and what was seen."""
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.get(f"/api/v1/jobs/{job_id}").json()
        seen.append((body["stage"], body["progress"]))
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body, seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running after {timeout}s: {seen[-3:]}")


def test_it_runs_a_tflite_job_through_the_api_to_a_measured_derived_version(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    parent = _ready_hf_version(alice_api, build_tiny_hf_dir(tmp_path / "hf"), tmp_path, "emb")
    started = alice_api.post(
        "/api/v1/jobs",
        {"version": parent["id"], "recipe": "tflite", "params": {"seq_len": 32}},
    )
    assert started.status_code == 201, started.content
    body, seen = _watch(alice_api, started.json()["id"])
    job = Job.objects.get(pk=body["id"])
    assert body["status"] == "succeeded", (job.error, job.log, celery_worker.log()[-3000:])
    stages = {stage for stage, _ in seen}
    assert {"convert", "quantize"} & stages, seen  # live progress from the converter
    assert any(0 < progress < 1 for _, progress in seen)
    child = ModelVersion.objects.get(pk=body["result_version"])
    assert child.format == "tflite" and child.recipe == "tflite"
    assert child.parent_id == parent["id"] and child.status == "ready"
    assert child.params["variant"] == "dynamic-int8" and child.params["seq_len"] == 32
    metrics = child.metrics
    assert metrics["fidelity"]["cosine_mean"] > 0.99
    assert metrics["fidelity"]["nn_agreement"] > 0.9
    assert metrics["evaluated_on"] == "built-in sentences"
    bench = metrics["benchmark"]
    assert bench["latency_p50_ms"] > 0 and bench["peak_rss_mb"] > 0
    assert list(bench["detail"]["latency_batch1"]) == ["32"]  # the model's fixed length
    # Every op with its version, and the minimum runtime version, recorded twice over:
    # in the recipe's metrics and in the inspection of the stored file.
    ops = metrics["tflite"]["op_versions"]
    assert ops["FULLY_CONNECTED"] and set(ops) == set(child.inspection["ops"])
    assert child.inspection["min_runtime_version"] == metrics["tflite"]["min_runtime_version"]
    inputs = {i["name"]: i for i in child.inspection["inputs"]}
    assert {"serving_default_input_ids", "serving_default_attention_mask"} <= set(inputs)
    assert all(i["shape"] == [1, 32] and i["dtype"] == "int32" for i in inputs.values())
    assert child.pipeline["fixed_shape"] == [1, 32] and child.pipeline["pooled_in_graph"]
    assert child.pipeline["max_seq_len"] == 32 and child.pipeline["pooling"] == "none"
    assert child.golden_sha256 and default_storage.exists(child.golden_key)
    with default_storage.open(child.golden_key) as handle:
        golden = np.load(handle)
        meta = json.loads(bytes(golden["meta"]).decode())
        assert meta["count"] == 32 and "min_cosine" in meta["tolerance"]
    assert "ai-edge-litert" in child.lineage_info["libraries"]
    assert child.lineage_info["parent_chain"][0]["id"] == parent["id"]
    assert any("minimum runtime version" in line for line in job.log.splitlines())
    _publish_install_and_serve(child, tmp_path)


def _publish_install_and_serve(child: ModelVersion, tmp_path: Path) -> None:
    """Publish the job's result, install it as a device does (TUF metadata, key unwrap,
    decryption), and serve it with the agent on LiteRT: the golden self-test the job
    recorded must pass, and a batch of texts must run through the batch-1 graph."""
    from django.utils import timezone
    from tinyfleet_agent._internal.record import PipelineSpec
    from tinyfleet_agent._internal.selftest import run_golden_selftest
    from tinyfleet_agent.predictor import Predictor

    from fleet.security import director
    from tests.fleet.publish_helpers import (
        device_resolves,
        enrolled_state,
        install,
        make_device,
        publish_now,
    )

    bundle = publish_now(child)
    assert bundle.record["runtime"] == "litert"
    assert bundle.record["pipeline"]["max_seq_len"] == 32
    device = make_device()
    director.assign(device.device, bundle)
    prefix = "/api/device/v1"
    assignment = device_resolves(device, prefix, enrolled_state(), timezone.now())
    files = install(device, prefix, assignment, tmp_path)
    spec = PipelineSpec.from_dict(bundle.record["pipeline"])
    predictor = Predictor(files, spec, runtime="litert")
    check = run_golden_selftest(predictor.runtime, files / "golden.npz")
    assert check.passed, check.to_dict()
    batch = predictor.predict(["turn the lights on", "hello world"])
    alone = predictor.predict(["hello world"])
    np.testing.assert_allclose(batch[1]["embedding"], alone[0]["embedding"], atol=1e-5)


def test_it_refuses_tflite_on_an_onnx_version_and_bad_params_with_400(
    alice_api: Any, tmp_path: Path
) -> None:
    onnx_version = upload(alice_api, build_tiny_bert_onnx(tmp_path / "m.onnx")).json()
    ModelVersion.objects.filter(pk=onnx_version["id"]).update(status="ready")
    Job.objects.filter(version_id=onnx_version["id"]).update(status="succeeded")
    refused = alice_api.post("/api/v1/jobs", {"version": onnx_version["id"], "recipe": "tflite"})
    assert refused.status_code == 400
    assert "applies to hf-dir models, not 'onnx'" in refused.json()["error"]
    assert not Job.objects.filter(kind="compress").exists()
    hf = upload(alice_api, zip_dir(build_tiny_hf_dir(tmp_path / "hf"), tmp_path / "hf.zip"))
    hf_id = hf.json()["id"]
    ModelVersion.objects.filter(pk=hf_id).update(status="ready")
    Job.objects.filter(version_id=hf_id).update(status="succeeded")
    jobs_before = Job.objects.count()
    bad = alice_api.post(
        "/api/v1/jobs", {"version": hf_id, "recipe": "tflite", "params": {"variant": "int4"}}
    )
    assert bad.status_code == 400 and "variant must be one of" in bad.json()["error"]
    assert Job.objects.count() == jobs_before


def test_a_model_the_converter_rejects_fails_the_job_with_its_message(
    celery_worker: Worker, alice_api: Any, tmp_path: Path
) -> None:
    folder = build_tiny_hf_dir(tmp_path / "odd")
    config = json.loads((folder / "config.json").read_text())
    # 32 hidden units cannot split over 3 heads: the model cannot be built.
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))
    parent = _ready_hf_version(alice_api, folder, tmp_path, "odd")
    versions_before = ModelVersion.objects.count()
    started = alice_api.post(
        "/api/v1/jobs", {"version": parent["id"], "recipe": "tflite", "params": {"seq_len": 32}}
    )
    body, _ = _watch(alice_api, started.json()["id"])
    assert body["status"] == "failed"
    # One sentence naming the cause; the traceback stays in the job log.
    assert "attention heads" in body["error"] and "Traceback" not in body["error"], body["error"]
    assert ModelVersion.objects.count() == versions_before
    # The worker survived the converter's failure and runs the next job: the default
    # fixed length, 128, does not fit this model's 64 positions.
    too_long = alice_api.post("/api/v1/jobs", {"version": parent["id"], "recipe": "tflite"})
    body, _ = _watch(alice_api, too_long.json()["id"])
    assert body["status"] == "failed"
    assert "seq_len 128 exceeds the model's 64 positions" in body["error"]
    assert ModelVersion.objects.count() == versions_before
