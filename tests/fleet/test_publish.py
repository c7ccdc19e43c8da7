"""Publishing: payload layout, encryption, record, image target."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from django.core.files.storage import default_storage
from django.utils import timezone

from fleet.models import Bundle, BundleStatus
from fleet.security import director
from fleet.security.publish import request_publish
from fleet.security.publish_worker import run_publish
from tests.conftest import wait_for
from tests.fleet.publish_helpers import (
    TOKENIZER,
    device_resolves,
    enrolled_state,
    install,
    make_device,
    make_version,
    onnx_files,
    publish_now,
    tflite_files,
)

# --- tests ------------------------------------------------------------------------------


def test_it_publishes_through_the_worker_and_the_device_installs_it(
    celery_worker: Any, alice_api: Any, tmp_path: Path, device_prefix: str
) -> None:
    files = onnx_files(tmp_path)
    version = make_version(files)
    response = alice_api.post("/api/v1/bundles", {"version": version.pk})
    assert response.status_code == 201, response.content
    bundle_id = response.json()["id"]
    assert response.json()["status"] == "publishing"
    bundle = wait_for(
        lambda: Bundle.objects.filter(pk=bundle_id).exclude(status="publishing").first(), 60
    )
    assert bundle.status == BundleStatus.PUBLISHED, bundle.error
    dev = make_device()
    state = enrolled_state()
    director.assign(dev.device, bundle)
    assignment = device_resolves(dev, device_prefix, state, timezone.now())
    out = install(dev, device_prefix, assignment, tmp_path)
    assert (out / "model.onnx").read_bytes() == files["model.onnx"]
    assert (out / "tokenizer.json").read_bytes() == TOKENIZER
    golden = (out / "golden.npz").read_bytes()
    assert hashlib.sha256(golden).hexdigest() == version.golden_sha256
    assert sorted(p.name for p in out.iterdir()) == ["golden.npz", "model.onnx", "tokenizer.json"]


def test_it_packs_onnx_external_data_beside_the_model(
    db: None, tmp_path: Path, device_prefix: str
) -> None:
    files = onnx_files(tmp_path, external=True)
    assert "model.onnx.data" in files
    bundle = publish_now(make_version(files))
    dev = make_device()
    director.assign(dev.device, bundle)
    assignment = device_resolves(dev, device_prefix, enrolled_state(), timezone.now())
    out = install(dev, device_prefix, assignment, tmp_path)
    assert (out / "model.onnx.data").read_bytes() == files["model.onnx.data"]
    assert assignment.record.runtime == "onnxruntime"


def test_it_publishes_tflite_for_litert_without_tokenizer(
    db: None, tmp_path: Path, device_prefix: str
) -> None:
    version = make_version(tflite_files(tmp_path), name="sensor", task="tensor", fmt="tflite")
    bundle = publish_now(version)
    record = bundle.record
    assert record["runtime"] == "litert"
    assert record["pipeline"]["tokenizer"] is None and record["pipeline"]["task"] == "tensor"
    dev = make_device()
    director.assign(dev.device, bundle)
    assignment = device_resolves(dev, device_prefix, enrolled_state(), timezone.now())
    out = install(dev, device_prefix, assignment, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["golden.npz", "model.tflite"]


def test_it_signs_a_record_from_the_version(db: None, tmp_path: Path) -> None:
    version = make_version(
        onnx_files(tmp_path),
        name="intent clf",
        task="text-classification",
        pipeline={"labels": ["neg", "pos"], "confidence_threshold": 0.55, "max_seq_len": 96},
    )
    record = publish_now(version).record
    assert record["model"] == "intent-clf" and record["version"] == "v1"
    assert record["release"] == 1 and record["min_runtime_version"] == "1.17"
    assert record["arch"] == ["x86_64", "aarch64"]
    assert record["pipeline"] == {
        "task": "text-classification",
        "tokenizer": "tokenizer.json",
        "max_seq_len": 96,
        "pooling": "none",
        "normalize": False,
        "labels": ["neg", "pos"],
        "confidence_threshold": "0.55",
    }
    assert record["golden_set_sha256"] == version.golden_sha256
    prov = record["provenance"]
    assert prov["version_id"] == version.pk and prov["recipe"] == "onnx-int8-auto"
    # Floats cannot be signed in TUF canonical JSON: measured numbers travel as strings.
    assert prov["metrics"]["fidelity"]["cosine_mean"] == "0.9962"
    assert prov["metrics"]["latency_ms"] == "1.25"


def test_it_numbers_releases_per_model_and_publishes_each_version_once(
    db: None, tmp_path: Path
) -> None:
    first = publish_now(make_version(onnx_files(tmp_path)))
    second = publish_now(make_version(onnx_files(tmp_path)))
    other = publish_now(make_version(onnx_files(tmp_path), name="other"))
    assert (first.release, second.release, other.release) == (1, 2, 1)
    again, created = request_publish(second.version, None)
    assert (again.pk, created) == (second.pk, False)


def test_it_fails_a_text_model_without_tokenizer_and_stores_nothing(
    db: None, tmp_path: Path
) -> None:
    version = make_version(onnx_files(tmp_path, tokenizer=False))
    bundle, _ = request_publish(version, None)
    assert run_publish(bundle.pk) == BundleStatus.FAILED
    bundle.refresh_from_db()
    assert "no tokenizer.json" in bundle.error
    assert bundle.ciphertext_key == "" and bundle.content_key_sealed is None
    assert not default_storage.exists(f"bundles/{bundle.pk}.enc")
    # A failed attempt can be repeated as a new bundle.
    retry, created = request_publish(version, None)
    assert created and retry.pk != bundle.pk
