"""Stored versions back on local disk: the archive limits and `materialized()`.

A leaf shared by the request side (upload checks) and the worker side (jobs, bundle
payloads), so neither has to import the other."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from compression.models import ModelVersion
from compression.pipeline.archive import ArchiveLimits, extract_zip
from compression.pipeline.formats import model_root
from compression.storage import local_copy


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.ARCHIVE_MAX_MEMBERS,
        max_total_uncompressed=settings.ARCHIVE_MAX_UNCOMPRESSED,
    )


@contextlib.contextmanager
def materialized(version: ModelVersion, scratch_prefix: str | None = None) -> Iterator[Path]:
    """The version as a local model path: the file itself, or the unpacked zip folder
    (in a temporary folder named `scratch_prefix`..., so a job's leftovers can be found)."""
    with local_copy(version.storage_key) as path:
        if not version.is_zip:
            yield path
            return
        with tempfile.TemporaryDirectory(dir=settings.TMP_DIR, prefix=scratch_prefix) as tmp:
            extract_zip(path, Path(tmp), archive_limits())
            yield model_root(Path(tmp))
