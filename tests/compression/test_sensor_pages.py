"""The Sensors page: upload training and test windows from the browser (a plain
multipart form) and land on the training job; refused requests keep nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from compression.models import Dataset, Job, RegisteredModel
from tests.fixtures.sensor_data import synthetic_ts_pair, synthetic_windows, write_ts

pytestmark = pytest.mark.django_db(transaction=True)


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _files(tmp_path: Path) -> dict[str, SimpleUploadedFile]:
    train, test = synthetic_ts_pair(tmp_path / "data", train=12, test=6)
    return {
        "train_file": SimpleUploadedFile(train.name, train.read_bytes()),
        "test_file": SimpleUploadedFile(test.name, test.read_bytes()),
    }


def test_it_uploads_sensor_windows_and_starts_training_from_the_page(
    alice: Any, tmp_path: Path
) -> None:
    page = _client(alice)
    assert 'data-testid="sensor-form"' in page.get("/sensors/").content.decode()
    answer = page.post(
        "/sensors/", {"name": "wrist", "params": '{"epochs": 5}', **_files(tmp_path)}
    )
    job = Job.objects.get()
    assert answer.status_code == 302 and answer["Location"] == f"/jobs/{job.pk}/"
    assert job.recipe == "sensor-transformer" and job.params["epochs"] == 5
    assert job.calibration_dataset is not None and job.calibration_dataset.rows == 12
    assert job.eval_dataset is not None and job.eval_dataset.kind == "sensor"
    assert job.version.format == "sensor-spec" and job.version.model.task == "sensor-classification"
    assert "wrist" in page.get("/sensors/").content.decode()


def test_it_refuses_a_bad_training_request_and_keeps_no_uploaded_data(
    alice: Any, bob: Any, tmp_path: Path
) -> None:
    page = _client(alice)
    windows, _ = synthetic_windows(6, seed=0)
    unlabelled = write_ts(tmp_path / "unlabelled.ts", windows, None)
    answer = page.post(
        "/sensors/",
        {"name": "pump", "train_file": SimpleUploadedFile("u.ts", unlabelled.read_bytes())},
    )
    assert answer.status_code == 400 and "has no labels" in answer.content.decode()
    bad_json = page.post("/sensors/", {"name": "pump", "params": "{", **_files(tmp_path)})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.content.decode()
    assert not Dataset.objects.exists() and not RegisteredModel.objects.exists()
    digest = hashlib.sha256(unlabelled.read_bytes()).hexdigest()
    assert not default_storage.exists(f"datasets/{digest}/u.ts")
    # Viewers may not train.
    assert _client(bob).get("/sensors/").status_code == 403
