"""Shared helpers of the publishing and device tests: versions, bundles, a device client."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from tinyfleet_agent._internal.payload import extract_payload
from tinyfleet_agent.bundle import (
    Assignment,
    TrustedState,
    canonical_json,
    decrypt_bundle,
    download_capped,
    resolve_assignment,
    unwrap_key,
)

from compression.models import ModelVersion, RegisteredModel, VersionStatus
from fleet.models import Bundle, BundleStatus, Device
from fleet.models.devices import digest
from fleet.security.device_metadata import image_metadata_bytes, trusted_roots
from fleet.security.publish import request_publish
from fleet.security.publish_worker import run_publish
from tests.fixtures.tiny_models import build_tiny_bert_onnx, build_tiny_tflite

TOKENIZER = b'{"version": "1.0", "model": {"type": "WordPiece"}}'


# --- versions ---------------------------------------------------------------------------


def _store(key: str, data: bytes) -> str:
    if default_storage.exists(key):
        default_storage.delete(key)
    return default_storage.save(key, ContentFile(data))


def onnx_files(tmp: Path, *, external: bool = False, tokenizer: bool = True) -> dict[str, bytes]:
    folder = tmp / f"onnx-{secrets.token_hex(4)}"
    folder.mkdir()
    build_tiny_bert_onnx(folder / "model.onnx", external_data=external, layers=1, hidden=16)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    if tokenizer:
        files["tokenizer.json"] = TOKENIZER
    return files


def tflite_files(tmp: Path) -> dict[str, bytes]:
    return {"model.tflite": build_tiny_tflite(tmp / "model.tflite").read_bytes()}


def make_version(
    files: dict[str, bytes],
    *,
    name: str = "minilm intent",
    task: str = "text-embedding",
    fmt: str = "onnx",
    golden: bool = True,
    status: str = VersionStatus.READY,
    pipeline: dict[str, Any] | None = None,
) -> ModelVersion:
    """A registered version whose artifact (plain file or zip) and golden set are stored."""
    model, _ = RegisteredModel.objects.get_or_create(name=name, defaults={"task": task})
    if len(files) == 1:
        filename, data = next(iter(files.items()))
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for member, content in files.items():
                zf.writestr(f"model/{member}", content)
        filename, data = "model.zip", buf.getvalue()
    sha = hashlib.sha256(data + secrets.token_bytes(8)).hexdigest()
    key = _store(f"models/{sha[:2]}/{sha}/{filename}", data)
    golden_bytes = b"golden:" + secrets.token_bytes(64)
    golden_sha = hashlib.sha256(golden_bytes).hexdigest()
    number = model.versions.count() + 1
    return ModelVersion.objects.create(
        model=model,
        number=number,
        format=fmt,
        storage_key=key,
        original_filename=filename,
        size_bytes=len(data),
        sha256=sha,
        status=status,
        recipe="onnx-int8-auto",
        pipeline=pipeline or {"pooling": "mean", "normalize": True, "max_seq_len": 64},
        metrics={"fidelity": {"cosine_mean": 0.9962}, "latency_ms": 1.25, "size_bytes": len(data)},
        golden_key=_store(f"golden/{golden_sha}.npz", golden_bytes) if golden else "",
        golden_sha256=golden_sha if golden else "",
        lineage_info={"recipe": "onnx-int8-auto", "params": {"per_channel": True}},
    )


def publish_now(version: ModelVersion, user: Any = None) -> Bundle:
    """Publish in this process (the worker path is covered by its own test)."""
    bundle, _ = request_publish(version, user)
    run_publish(bundle.pk)
    bundle.refresh_from_db()
    assert bundle.status == BundleStatus.PUBLISHED, bundle.error
    return bundle


# --- devices --------------------------------------------------------------------------


@dataclass
class TestDevice:
    __test__ = False
    device: Device
    key: X25519PrivateKey
    credential: str

    @property
    def id(self) -> str:
        return str(self.device.pk)

    def client(self) -> Client:
        return Client(HTTP_AUTHORIZATION=f"Bearer {self.credential}")


# What the agent reports on a machine like this one (both runtimes installed).
DEFAULT_FACTS: dict[str, Any] = {
    "arch": "x86_64",
    "runtimes": {"onnxruntime": "1.31.1", "litert": "2.3.0"},
}


def make_device(name: str = "pi-1", facts: dict[str, Any] | None = None) -> TestDevice:
    key = X25519PrivateKey.generate()
    credential = "tfd_" + secrets.token_urlsafe(32)
    device = Device.objects.create(
        name=name,
        facts=DEFAULT_FACTS if facts is None else facts,
        identity_public_key=secrets.token_hex(32),
        encryption_public_key=key.public_key().public_bytes_raw().hex(),
        credential_digest=digest(credential),
    )
    return TestDevice(device, key, credential)


def enrolled_state() -> TrustedState:
    """What a device trusts right after enrollment (roots from `trusted_roots`)."""
    roots = trusted_roots()
    return TrustedState.bootstrap(canonical_json(roots["image"]), canonical_json(roots["director"]))


def fetch(dev: TestDevice, prefix: str, name: str, status: int = 200) -> bytes:
    response = dev.client().get(f"{prefix}/{name}")
    assert response.status_code == status, response.content[:300]
    return b"".join(response.streaming_content) if response.streaming else response.content


def device_resolves(dev: TestDevice, prefix: str, state: TrustedState, now: datetime) -> Assignment:
    """The agent's verification of everything the server serves to this device."""
    image = {n: fetch(dev, prefix, f"metadata/image/{n}.json") for n in ("timestamp",)}
    ts = json.loads(image["timestamp"])["signed"]["meta"]["snapshot.json"]["version"]
    snap = fetch(dev, prefix, f"metadata/image/{ts}.snapshot.json")
    tgt_version = json.loads(snap)["signed"]["meta"]["targets.json"]["version"]
    return resolve_assignment(
        state,
        timestamp=image["timestamp"],
        snapshot=snap,
        targets=fetch(dev, prefix, f"metadata/image/{tgt_version}.targets.json"),
        director_targets=fetch(dev, prefix, "metadata/director/targets.json"),
        device_id=dev.id,
        now=now,
    )


def install(dev: TestDevice, prefix: str, assignment: Assignment, tmp: Path) -> Path:
    """Download (capped, digest-checked), unwrap, decrypt and unpack like the agent."""
    response = dev.client().get(f"{prefix}/bundles/{assignment.bundle_id}/payload")
    assert response.status_code == 200
    enc = tmp / f"{assignment.bundle_id}.enc"
    download_capped(
        response.streaming_content, enc, assignment.length, expected_sha256=assignment.sha256
    )
    key = unwrap_key(
        assignment.wrapped_key,
        dev.key,
        bundle_id=assignment.bundle_id,
        release=assignment.release,
        device_id=dev.id,
    )
    payload = tmp / f"{assignment.bundle_id}.zip"
    decrypt_bundle(enc, payload, key, assignment.record.cipher, check_ciphertext_hash=False)
    out = tmp / f"{assignment.bundle_id}-files"
    out.mkdir()
    extract_payload(payload, out, golden_sha256=assignment.record.golden_set_sha256)
    return out


def image_set() -> tuple[bytes, bytes, bytes]:
    """The image metadata a device fetches, exactly as served."""
    ts, snap, tgt = (
        image_metadata_bytes(f"{r}.json") for r in ("timestamp", "snapshot", "targets")
    )
    return ts, snap, tgt
