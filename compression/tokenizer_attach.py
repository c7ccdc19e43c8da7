"""Attach a tokenizer to a text model uploaded without one.

The result is a new version (the model's bytes plus the tokenizer files, zipped), child
of the original, inspected like any upload; its lineage says where the tokenizer came
from (uploaded files with their digests, or another version).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings

from compression.derive import TOKENIZER_FILES
from compression.models import TEXT_TASKS, Job, ModelVersion, VersionStatus
from compression.pipeline.assess import find_tokenizer
from compression.services import RegistryError, register_upload

__all__ = ["attach_tokenizer"]

_MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


def _check_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise RegistryError("a tokenizer needs its tokenizer.json (the Hugging Face fast format)")
    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception type
        raise RegistryError(f"tokenizer.json could not be loaded: {exc}") from None


def _uploaded(files: dict[str, Path], folder: Path) -> dict[str, Any]:
    digests = {}
    for name, path in files.items():
        if name not in TOKENIZER_FILES:
            raise RegistryError(
                f"{name!r} is not a tokenizer file; send {', '.join(TOKENIZER_FILES)}"
            )
        if path.stat().st_size > _MAX_TOKENIZER_BYTES:
            raise RegistryError(f"{name} is larger than {_MAX_TOKENIZER_BYTES >> 20} MB")
        shutil.copyfile(path, folder / name)
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"uploaded": digests}


def _borrowed(source: ModelVersion, folder: Path) -> dict[str, Any]:
    from compression.archives import materialized

    with materialized(source) as path:
        found = find_tokenizer(path)
        if found is None:
            raise RegistryError(f"{source} has no tokenizer to take")
        for name in TOKENIZER_FILES:
            if (found.parent / name).is_file():
                shutil.copyfile(found.parent / name, folder / name)
    return {"from_version": {"id": source.pk, "sha256": source.sha256, "model": source.model.name}}


def _model_files(version: ModelVersion, folder: Path) -> None:
    """The version's model (and external data beside it) without any old tokenizer."""
    from compression.archives import materialized

    with materialized(version) as path:
        root = path.parent if path.is_file() and version.is_zip else path
        if root.is_file():
            shutil.copyfile(root, folder / root.name)
            return
        for file in root.rglob("*"):
            if file.is_file() and file.name not in TOKENIZER_FILES:
                target = folder / file.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target)


def attach_tokenizer(
    user: Any,
    version: ModelVersion,
    *,
    files: dict[str, Path] | None = None,
    source: ModelVersion | None = None,
) -> tuple[ModelVersion, Job]:
    """A new version: `version`'s model with the given tokenizer files, or `source`'s.

    Raises:
        RegistryError: not a ready text model, no or bad tokenizer, or both/neither given.
    """
    if version.model.task not in TEXT_TASKS:
        raise RegistryError(f"{version.model.task} models take no tokenizer")
    if version.status != VersionStatus.READY or version.format not in ("onnx", "tflite"):
        raise RegistryError("attach a tokenizer to a ready ONNX or TFLite version")
    if bool(files) == (source is not None):
        raise RegistryError("give either tokenizer files or a version to take them from")
    with tempfile.TemporaryDirectory(dir=settings.TMP_DIR) as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        origin = _borrowed(source, folder) if source is not None else _uploaded(files or {}, folder)
        _check_tokenizer(folder)
        _model_files(version, folder)
        archive = Path(tmp) / f"{version.model.name}-v{version.number}-tokenizer.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    zf.write(file, file.relative_to(folder).as_posix())
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        lineage = {
            "parent_chain": [
                {"id": v.pk, "sha256": v.sha256, "recipe": v.recipe or "upload"}
                for v in version.lineage()
            ],
            "recipe": "attach-tokenizer",
            "tokenizer": origin,
        }
        return register_upload(
            user=user,
            name=version.model.name,
            task=version.model.task,
            path=archive,
            filename=archive.name,
            sha256=digest,
            size=archive.stat().st_size,
            derived={
                "parent": version,
                "recipe": "attach-tokenizer",
                "lineage_info": lineage,
                "pipeline": dict(version.pipeline or {}),
            },
        )
