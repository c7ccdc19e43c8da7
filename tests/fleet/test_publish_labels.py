"""Classifier labels and the confidence threshold travel from publishing into the signed
record (real PostgreSQL, real encryption and signing in this process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from accounts.models import AuditEvent
from compression.models import ModelVersion
from compression.pipeline.inspect import inspect_model
from fleet.models import Bundle
from fleet.security.publish_worker import run_publish
from tests.fixtures.tiny_models import build_tiny_hf_dir
from tests.fleet.publish_helpers import make_version, onnx_files, publish_now

LABELS = ["billing", "outage", "other"]


def _classifier(tmp: Path, *, name: str = "ticket router", **kw: Any) -> ModelVersion:
    version = make_version(onnx_files(tmp), name=name, task="text-classification", **kw)
    version.inspection = {"outputs": [{"name": "logits", "shape": ["batch", 3]}]}
    version.save(update_fields=["inspection"])
    return version


def test_it_signs_the_operators_labels_and_threshold_into_the_record(
    db: None, alice_api: Any, tmp_path: Path
) -> None:
    version = _classifier(tmp_path)
    body = {"version": version.pk, "labels": LABELS, "confidence_threshold": 0.7}
    answer = alice_api.post("/api/v1/bundles", body)
    assert answer.status_code == 201, answer.content
    assert run_publish(answer.json()["id"]) == "published"
    record = Bundle.objects.get().record
    assert record["pipeline"]["labels"] == LABELS
    assert record["pipeline"]["confidence_threshold"] == "0.7"
    event = AuditEvent.objects.get(action="bundle.publish")
    assert event.detail["labels"] == LABELS and event.detail["confidence_threshold"] == 0.7
    # The same request again is idempotent; other labels for the same version are not.
    assert alice_api.post("/api/v1/bundles", body).status_code == 200
    other = alice_api.post("/api/v1/bundles", {**body, "labels": ["a", "b", "c"]})
    assert other.status_code == 400 and "already published" in other.json()["error"]


def test_it_takes_the_labels_of_the_hf_config_up_the_lineage_by_default(
    db: None, tmp_path: Path
) -> None:
    folder = build_tiny_hf_dir(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"1": "outage", "0": "billing", "2": "other"}
    (folder / "config.json").write_text(json.dumps(config))
    inspected = inspect_model(folder, "hf-dir")
    assert inspected["labels"] == LABELS
    parent = make_version(onnx_files(tmp_path), name="ticket router", task="text-classification")
    parent.inspection = inspected
    parent.save(update_fields=["inspection"])
    child = _classifier(tmp_path)
    child.parent = parent
    child.save(update_fields=["parent"])
    bundle = publish_now(child)
    assert bundle.record is not None and bundle.record["pipeline"]["labels"] == LABELS


def test_it_ignores_placeholder_labels_in_an_hf_config(tmp_path: Path) -> None:
    folder = build_tiny_hf_dir(tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    (folder / "config.json").write_text(json.dumps(config))
    assert inspect_model(folder, "hf-dir")["labels"] == []


@pytest.mark.parametrize(
    ("task", "body", "message"),
    [
        ("text-embedding", {"labels": LABELS}, "for classifiers"),
        ("text-classification", {"labels": ["a", "b"]}, "2 labels given, but the model has 3"),
        ("text-classification", {"labels": ["a", "", "c"]}, "non-empty"),
        ("text-classification", {"confidence_threshold": 1.5}, "[0, 1]"),
        ("text-classification", {"confidence_threshold": 0.1234567}, "6 decimals"),
    ],
)
def test_it_refuses_labels_and_thresholds_devices_cannot_use_and_stores_nothing(
    db: None, alice_api: Any, tmp_path: Path, task: str, body: dict[str, Any], message: str
) -> None:
    if task == "text-classification":
        version = _classifier(tmp_path)
    else:
        version = make_version(onnx_files(tmp_path), task=task)
    answer = alice_api.post("/api/v1/bundles", {"version": version.pk, **body})
    assert answer.status_code == 400 and message in answer.json()["error"], answer.content
    assert not Bundle.objects.exists()
    assert not AuditEvent.objects.filter(action="bundle.publish").exists()
