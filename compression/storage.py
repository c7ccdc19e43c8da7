"""Artifact storage helpers over Django's default storage (local files or S3)."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    cleaned = _UNSAFE.sub("_", base).strip("._") or "model"
    return cleaned[-120:]


def content_key(sha256: str, filename: str) -> str:
    """Content-addressed key: identical bytes are stored once, whatever their model."""
    return f"models/{sha256[:2]}/{sha256}/{safe_filename(filename)}"


def store_file(key: str, local_path: Path) -> bool:
    """Store a local file under `key`; returns False when it was already stored."""
    if default_storage.exists(key):
        return False
    with open(local_path, "rb") as handle:
        saved = default_storage.save(key, File(handle, name=key))
    if saved != key:  # a concurrent upload of the same bytes won the race
        default_storage.delete(saved)
        return False
    return True


@contextlib.contextmanager
def local_copy(key: str) -> Iterator[Path]:
    """A local path for a stored artifact: the file itself on local storage, else a
    temporary download that is removed afterwards."""
    try:
        yield Path(default_storage.path(key))
        return
    except NotImplementedError:
        pass
    with tempfile.TemporaryDirectory(dir=settings.TMP_DIR) as tmp:
        target = Path(tmp) / Path(key).name
        with default_storage.open(key, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1024 * 1024)
        yield target
