"""Turning a recipe's output folder into a stored, immutable derived ModelVersion."""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import zipfile
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max

from compression.models import Job, JobStatus, ModelVersion, VersionStatus
from compression.pipeline.assess import find_tokenizer
from compression.storage import content_key, store_file

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
LIBRARIES = ("onnx", "onnxruntime", "torch", "transformers", "ai-edge-litert", "numpy")


def carry_tokenizer(parent_path: Path, out_dir: Path) -> None:
    """Copy the parent's tokenizer files next to the derived model (devices need them)."""
    tokenizer = find_tokenizer(parent_path)
    if tokenizer is None or (out_dir / "tokenizer.json").exists():
        return
    for name in TOKENIZER_FILES:
        source = tokenizer.parent / name
        if source.is_file():
            shutil.copy2(source, out_dir / name)


def package(out_dir: Path, work: Path) -> Path:
    """One file to store: the model itself when it is alone, else a zip of the folder."""
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    if len(files) == 1:
        return files[0]
    archive = work / "model.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in files:
            zf.write(file, file.relative_to(out_dir).as_posix())
    return archive


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def lineage(job: Job) -> dict[str, Any]:
    parent = job.version
    datasets = {
        role: {"id": ds.pk, "name": ds.name, "sha256": ds.sha256}
        for role, ds in (("evaluation", job.eval_dataset), ("calibration", job.calibration_dataset))
        if ds is not None
    }
    return {
        "parent_chain": [
            {"id": v.pk, "sha256": v.sha256, "recipe": v.recipe or "upload"}
            for v in parent.lineage()
        ],
        "recipe": job.recipe,
        "params": job.params,
        "datasets": datasets,
        "libraries": library_versions(),
        "job": job.pk,
    }


def store_derived(
    job: Job,
    artifact: Path,
    fmt: str,
    *,
    metrics: dict[str, Any],
    pipeline: dict[str, Any],
    golden_key: str,
    golden_sha256: str,
    inspection: dict[str, Any],
) -> ModelVersion:
    """Store the artifact and create the derived version, finishing the job in the same
    transaction. A redelivered job that produced identical bytes reuses that version."""
    parent = job.version
    digest = sha256_of(artifact)
    key = content_key(digest, artifact.name)
    store_file(key, artifact)
    with transaction.atomic():
        existing = ModelVersion.objects.filter(model=parent.model, sha256=digest).first()
        version = existing or _create(
            job,
            key,
            artifact,
            fmt,
            digest,
            metrics,
            pipeline,
            golden_key,
            golden_sha256,
            inspection,
        )
        job.metrics = metrics
        Job.objects.filter(pk=job.pk).update(metrics=metrics)
        if existing:
            job.append_log(f"identical bytes already registered as v{existing.number}")
        job.finish(JobStatus.SUCCEEDED, result=version)
    return version


def _create(
    job: Job,
    key: str,
    artifact: Path,
    fmt: str,
    digest: str,
    metrics: dict[str, Any],
    pipeline: dict[str, Any],
    golden_key: str,
    golden_sha256: str,
    inspection: dict[str, Any],
) -> ModelVersion:
    parent = job.version
    model = type(parent.model).objects.select_for_update().get(pk=parent.model_id)
    number = (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    try:
        with transaction.atomic():
            return ModelVersion.objects.create(
                model=model,
                number=number,
                format=fmt,
                storage_key=key,
                original_filename=f"{model.name}-v{number}-{job.recipe}{artifact.suffix}",
                size_bytes=artifact.stat().st_size,
                sha256=digest,
                parent=parent,
                recipe=job.recipe,
                params=job.params,
                status=VersionStatus.READY,
                inspection=inspection,
                metrics=metrics,
                pipeline=pipeline,
                golden_key=golden_key,
                golden_sha256=golden_sha256,
                lineage_info=lineage(job),
                created_by=job.created_by,
            )
    except IntegrityError:
        return ModelVersion.objects.get(model=model, sha256=digest)
