"""`tinyfleet-agent verify`: an exported bundle checked offline, in a separate process
that has no Django and trusts only the root it is given."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from django.core.management import call_command

from fleet.models import Bundle
from fleet.security import director
from fleet.security.device_metadata import trusted_roots
from tests.conftest import ROOT
from tests.fleet.publish_helpers import (
    TestDevice,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)


def verify(*args: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    return subprocess.run(
        [sys.executable, "-m", "tinyfleet_agent.cli", "verify", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT / "agent",
        check=False,
    )


@pytest.fixture
def exported(db: None, alice_api: Any, tmp_path: Path) -> tuple[Bundle, TestDevice, Path, Path]:
    """An export for an assigned device, the enrollment roots, and the device key."""
    files = onnx_files(tmp_path)
    bundle = publish_now(make_version(files))
    dev = make_device()
    director.assign(dev.device, bundle)
    roots = tmp_path / "roots.json"
    roots.write_text(json.dumps(trusted_roots()))
    response = alice_api.get(f"/api/v1/bundles/{bundle.pk}/export?device={dev.id}")
    export = tmp_path / "export.tar"
    export.write_bytes(b"".join(response.streaming_content))
    (tmp_path / "device.key").write_bytes(dev.key.private_bytes_raw())
    return bundle, dev, export, roots


def test_it_verifies_signatures_expiry_and_hashes_without_a_key(exported: Any) -> None:
    bundle, _, export, roots = exported
    result = verify(export, "--trusted-root", roots)
    assert result.returncode == 0, result.stderr
    assert f"OK  {bundle.pk}" in result.stdout and "not decrypted" in result.stdout


def test_it_decrypts_with_the_device_key(exported: Any, tmp_path: Path) -> None:
    bundle, _, export, roots = exported
    out = tmp_path / "payload.zip"
    result = verify(
        export,
        "--trusted-root",
        roots,
        "--device-key",
        tmp_path / "device.key",
        "--output",
        out,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["decrypted"] is True and report["bundle"] == bundle.pk
    assert report["payload_files"] == ["golden.npz", "model.onnx", "tokenizer.json"]
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["model.onnx", "tokenizer.json", "golden.npz"]


def test_wrong_device_key_cannot_decrypt(exported: Any, tmp_path: Path) -> None:
    _, _, export, roots = exported
    other = tmp_path / "other.key"
    other.write_text(X25519PrivateKey.generate().private_bytes_raw().hex())
    result = verify(export, "--trusted-root", roots, "--device-key", other)
    assert result.returncode == 1 and "key-unwrap-failed" in result.stderr


def _rewrite(export: Path, name: str, change: Any) -> None:
    members = []
    with tarfile.open(export) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            members.append((member, change(data) if member.name == name else data))
    with tarfile.open(export, "w") as tar:
        for member, data in members:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_payload_tampering_in_the_export_is_detected(exported: Any) -> None:
    bundle, _, export, roots = exported
    _rewrite(export, bundle.target_name, lambda d: d[:500] + bytes([d[500] ^ 1]) + d[501:])
    result = verify(export, "--trusted-root", roots)
    assert result.returncode == 1 and "payload-tampered" in result.stderr


def test_untrusted_root_and_expiry_are_refused(exported: Any, tmp_path: Path) -> None:
    _, _, export, roots = exported
    stranger = json.loads(roots.read_text())
    stranger["image"]["signed"]["version"] = 1
    stranger["image"]["signed"]["expires"] = "2099-01-01T00:00:00Z"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(stranger))
    assert "bad-signature" in verify(export, "--trusted-root", forged).stderr
    late = verify(export, "--trusted-root", roots, "--at", "2099-01-01T00:00:00")
    assert late.returncode == 1 and "expired" in late.stderr


def test_an_old_trusted_root_follows_the_exported_chain(
    db: None, alice_api: Any, tmp_path: Path
) -> None:
    bundle = publish_now(make_version(onnx_files(tmp_path)))
    roots = tmp_path / "roots.json"
    roots.write_text(json.dumps(trusted_roots()))
    call_command("tinyfleet_keys", "rotate", "root")
    call_command("tinyfleet_keys", "rotate", "targets")
    response = alice_api.get(f"/api/v1/bundles/{bundle.pk}/export")
    export = tmp_path / "export.tar"
    export.write_bytes(b"".join(response.streaming_content))
    result = verify(export, "--trusted-root", roots, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["image_root_version"] == 3
