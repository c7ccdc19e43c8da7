"""Training a sensor model through the API and a real Celery worker subprocess: upload
sensor windows (.ts), train, int8, TFLite Micro; the trained version carries accuracy
of float / int8 on TFLM, the measured arena, the firmware sources and a golden set.
Bad requests are refused up front with nothing left behind."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from compression.models import Dataset, Job, ModelVersion, RegisteredModel
from compression.pipeline.tflm.carray import parse_c_array, parse_header_constants
from tests.conftest import Worker, wait_for
from tests.fixtures.sensor_data import synthetic_ts_pair, synthetic_windows

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {"epochs": 30, "d_model": 16, "ff": 32, "threads": 1}


def _upload(api: Any, path: Path, kind: str = "") -> Any:
    data = {"file": SimpleUploadedFile(path.name, path.read_bytes()), "name": path.stem}
    if kind:
        data["kind"] = kind
    return api.post("/api/v1/datasets", data)


def test_it_trains_a_sensor_model_to_an_int8_tflm_version_with_accuracy(
    celery_worker: Worker, alice_api: Any, alice: Any, tmp_path: Path
) -> None:
    train_file, test_file = synthetic_ts_pair(tmp_path / "data")
    train = _upload(alice_api, train_file)
    test = _upload(alice_api, test_file)
    assert train.status_code == 201, train.content
    assert train.json()["kind"] == "sensor" and train.json()["rows"] == 60
    assert train.json()["has_labels"] is True

    started = alice_api.post(
        "/api/v1/sensor-models",
        {
            "name": "wrist",
            "dataset": train.json()["id"],
            "eval_dataset": test.json()["id"],
            "params": FAST,
        },
    )
    assert started.status_code == 201, started.content
    body = started.json()
    assert (
        body["spec_version"]["format"] == "sensor-spec"
        and body["job"]["recipe"] == "sensor-transformer"
    )
    job: Job = wait_for(
        lambda: (j := Job.objects.get(pk=body["job"]["id"])).is_finished and j, timeout=400
    )
    assert job.status == "succeeded", (job.error, job.log, celery_worker.log())
    child = ModelVersion.objects.get(pk=job.result_version_id)
    assert child.model.task == "sensor-classification" and child.format == "tflite"
    assert child.parent_id == body["spec_version"]["id"] and child.recipe == "sensor-transformer"
    metrics = child.metrics
    assert metrics["accuracy"]["float"] >= 0.9
    assert abs(metrics["accuracy"]["tflm_int8"] - metrics["accuracy"]["float"]) <= 0.05
    evaluation = metrics["evaluation"]["tflm_int8"]
    assert np.array(evaluation["confusion_matrix"]).sum() == 30
    assert set(evaluation["per_class"]) == {"idle", "walk", "run"}
    assert metrics["training"]["data"]["missing_values"] == 1
    assert metrics["training"]["data"]["unequal_lengths"] is True
    assert child.pipeline["labels"] == ["idle", "walk", "run"] and child.golden_sha256
    assert "epoch 30/30" in job.log

    page = Client()
    page.force_login(alice)
    html = page.get(f"/versions/{child.pk}/").content.decode()
    assert 'data-testid="confusion-matrix"' in html and "int8 on TFLite Micro" in html
    assert f"tensor arena {metrics['arena_bytes']} bytes" in html

    download = alice_api.get(f"/api/v1/versions/{child.pk}/file")
    with zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))) as archive:
        names = set(archive.namelist())
        assert {
            "model.tflite",
            "exports.zip",
            "model_data.cc",
            "model_data.h",
            "sensor.json",
        } <= names
        # One loose model (what devices get); the float exports travel packed.
        assert not any(n.endswith(".onnx") for n in names)
        with zipfile.ZipFile(io.BytesIO(archive.read("exports.zip"))) as exports:
            assert set(exports.namelist()) == {"model.onnx", "model_float.tflite"}
        model = archive.read("model.tflite")
        assert parse_c_array(archive.read("model_data.cc").decode()) == model
        header = parse_header_constants(archive.read("model_data.h").decode())
        sidecar = json.loads(archive.read("sensor.json"))
    assert header["kTensorArenaSize"] == metrics["arena_bytes"] == sidecar["arena_bytes"]
    assert header["kChannels"] == 3 and header["kWindow"] == 64
    assert sidecar["window"] == 64 and sidecar["hop"] == 32 and sidecar["input"] == "samples"


def test_it_refuses_training_requests_it_cannot_run_and_creates_nothing(
    alice_api: Any, bob_api: Any, tmp_path: Path
) -> None:
    windows, _ = synthetic_windows(12, seed=3)
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=windows)
    plain = _upload(alice_api, unlabelled, kind="sensor")
    assert plain.status_code == 201 and plain.json()["has_labels"] is False
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "hello"}\n')
    text_id = _upload(alice_api, text).json()["id"]

    def train(**body: Any) -> Any:
        return alice_api.post("/api/v1/sensor-models", {"name": "m", "params": FAST, **body})

    no_labels = train(dataset=plain.json()["id"])
    assert no_labels.status_code == 400 and "no labels" in no_labels.json()["error"]
    assert train(dataset=text_id).status_code == 400
    assert "not sensor data" in train(dataset=text_id).json()["error"]
    bad_name = train(dataset=plain.json()["id"], name="\u0017|9")
    assert bad_name.status_code == 400 and "name" in bad_name.json()["error"]
    missing = train(dataset=9999)
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]
    bad = train(dataset=plain.json()["id"], params={"task": "anomaly", "layers": 9})
    assert bad.status_code == 400 and "layers" in bad.json()["error"]
    viewer = bob_api.post("/api/v1/sensor-models", {"name": "m", "dataset": plain.json()["id"]})
    assert viewer.status_code == 403
    assert not RegisteredModel.objects.exists() and not Job.objects.exists()


def test_it_refuses_malformed_sensor_files_with_the_line_that_is_wrong(
    alice_api: Any, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.ts"
    broken.write_text("@dimensions 1\n@classLabel true a b\n@data\n1,2,3:a\n1,x,3:b\n")
    answer = _upload(alice_api, broken)
    assert answer.status_code == 400
    assert "broken.ts line 5" in answer.json()["error"] and "'x'" in answer.json()["error"]
    assert not Dataset.objects.exists()
