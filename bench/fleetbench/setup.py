"""Set-up: Django in this process, the bundle, enrollment, bulk devices."""

from __future__ import annotations

import http.client
import json
import os
import platform
import secrets
import shutil
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from tinyfleet_agent._internal.runtime import available_runtimes

from .common import API
from .load import _pct
from .server import Server


def setup_django(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith(("DATABASE_", "CELERY_"))]:
        del os.environ[key]
    os.environ.update(env)
    import django

    django.setup()


def build_version(work: Path) -> Any:
    """A ready ONNX version: tiny BERT + WordPiece tokenizer + a golden set whose
    references were computed with onnxruntime (what an export job stores)."""
    import hashlib
    import io
    import zipfile

    import numpy as np
    import onnxruntime as ort
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from tokenizers import Tokenizer

    from compression.models import ModelVersion, RegisteredModel, VersionStatus
    from compression.pipeline.golden import build_golden, golden_tolerance
    from tests.fixtures.tiny_models import build_tiny_bert_onnx, build_tiny_hf_dir

    folder = work / "model"
    folder.mkdir()
    build_tiny_bert_onnx(folder / "model.onnx", layers=2, hidden=32, vocab=20)
    hf = build_tiny_hf_dir(work / "hf")
    shutil.copy(hf / "tokenizer.json", folder / "tokenizer.json")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    sentences = [
        "the tiny model runs fast on small chips",
        "edge device",
        "a fleet of devices",
        "the model runs on the edge",
        "small chips running tiny models",
        "fast fleet",
        "the device runs",
        "a tiny edge model",
    ]
    feeds = []
    for s in sentences:
        enc = tok.encode(s)
        feeds.append(
            {
                "input_ids": np.array([enc.ids], np.int64),
                "attention_mask": np.array([enc.attention_mask], np.int64),
                "token_type_ids": np.array([enc.type_ids], np.int64),
            }
        )
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    refs = [session.run(None, f)[0] for f in feeds]
    tolerance = golden_tolerance("text-embedding", refs, refs, feeds)
    golden_path = work / "golden.npz"
    golden_sha = build_golden(golden_path, feeds, refs, "text-embedding", tolerance)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("model.onnx", "tokenizer.json"):
            zf.write(folder / name, f"model/{name}")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    key = default_storage.save(f"models/{sha[:2]}/{sha}/model.zip", ContentFile(data))
    gkey = default_storage.save(f"golden/{golden_sha}.npz", ContentFile(golden_path.read_bytes()))
    model, _ = RegisteredModel.objects.get_or_create(
        name="bench-embedder", defaults={"task": "text-embedding"}
    )
    return ModelVersion.objects.create(
        model=model,
        number=1,
        format="onnx",
        storage_key=key,
        original_filename="model.zip",
        size_bytes=len(data),
        sha256=sha,
        status=VersionStatus.READY,
        recipe="onnx-fp32",
        pipeline={"pooling": "mean", "normalize": True, "max_seq_len": 64},
        metrics={"fidelity": {"cosine_mean": 1.0}, "latency_ms": 0.5, "size_bytes": len(data)},
        golden_key=gkey,
        golden_sha256=golden_sha,
        lineage_info={"recipe": "onnx-fp32", "params": {}},
    )


def http_enroll(server: Server, state_root: Path, token: str, n: int) -> dict[str, Any]:
    """n enrollments through POST /enroll with the agent's own enroll(), 8 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from tinyfleet_agent.fleet import enroll

    url = f"http://127.0.0.1:{server.port}"

    def one(i: int) -> float:
        start = time.perf_counter()
        enroll(
            state_root / f"dev-{i:05d}", url, token, name=f"sim-{i:05d}", labels={"site": "bench"}
        )
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        lat = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return {
        "n": n,
        "wall": wall,
        "rate": n / wall,
        "p50": statistics.median(lat),
        "p95": _pct(lat, 95),
        "concurrency": 8,
    }


def bulk_devices(
    state_root: Path, start: int, n: int, token_id: int, group_id: int, port: int, poll: int
) -> dict[str, Any]:
    """n devices straight into the database, with the files the agent writes at enrollment."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from tinyfleet_agent._internal.identity import write_secret
    from tinyfleet_agent._internal.record import canonical_json
    from tinyfleet_agent._internal.stream_aead import atomic_write_bytes
    from tinyfleet_agent._internal.tuf_verify import TrustedState
    from tinyfleet_agent.fleet import root_fingerprint

    from fleet.models import Device
    from fleet.models.devices import digest
    from fleet.security.device_metadata import trusted_roots

    t0 = time.perf_counter()
    roots = trusted_roots()
    trust = TrustedState.bootstrap(
        canonical_json(roots["image"]), canonical_json(roots["director"])
    ).to_json()
    fingerprint = root_fingerprint(roots["image"])
    rows = []
    runtimes = available_runtimes()
    for i in range(start, start + n):
        identity, decryption = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        credential = "tfd_" + secrets.token_urlsafe(32)
        device_id = uuid.uuid4()
        d = state_root / f"dev-{i:05d}"
        d.mkdir(mode=0o700)
        write_secret(d / "identity.key", identity.private_bytes_raw())
        write_secret(d / "decryption.key", decryption.private_bytes_raw())
        write_secret(d / "credential", credential.encode())
        atomic_write_bytes(d / "trust.json", trust)
        device = {
            "device_id": str(device_id),
            "server": f"http://127.0.0.1:{port}",
            "name": f"sim-{i:05d}",
            "poll_interval": poll,
            "image_root_fingerprint": fingerprint,
        }
        atomic_write_bytes(d / "device.json", json.dumps(device).encode())
        rows.append(
            Device(
                id=device_id,
                name=f"sim-{i:05d}",
                labels={"site": "bench"},
                # The runtimes a real agent here reports: rollouts pick each device's
                # variant from them.
                facts={"arch": platform.machine(), "runtimes": runtimes, "simulated": True},
                identity_public_key=identity.public_key().public_bytes_raw().hex(),
                encryption_public_key=decryption.public_key().public_bytes_raw().hex(),
                credential_digest=digest(credential),
                enrolled_with_id=token_id,
            )
        )
    Device.objects.bulk_create(rows, batch_size=500)
    through = Device.groups.through
    through.objects.bulk_create(
        [through(device_id=r.id, group_id=group_id) for r in rows], batch_size=1000
    )
    wall = time.perf_counter() - t0
    return {"n": n, "wall": wall, "rate": n / wall}


def device_creds(state_root: Path) -> list[str]:
    return [
        (d / "credential").read_text().strip() for d in sorted(state_root.iterdir()) if d.is_dir()
    ]


def fetch_etags(server: Server, creds: list[str]) -> list[tuple[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    out = []
    for cred in creds:
        conn.request("GET", f"{API}/state", headers={"Authorization": f"Bearer {cred}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        out.append((cred, resp.headers["ETag"]))
    conn.close()
    return out
