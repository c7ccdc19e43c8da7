"""Operator API for bundles: publish, list, inspect, download and export.

`POST /bundles {version}` answers 201 with a new bundle in status `publishing` (the
worker encrypts and signs it), or 200 with the version's existing bundle: publishing is
idempotent per version, and only a `failed` bundle can be published again.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
import uuid
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from accounts.models import Role
from accounts.permissions import require_role
from compression.models import ModelVersion
from fleet.models import Bundle, BundleStatus, Device
from fleet.models.keys import KeyRole, Repo
from fleet.security import director, image_repo
from fleet.security.device_metadata import serve_stored
from fleet.security.publish import (
    PublishError,
    publish_overrides,
    request_publish,
    signed_target,
)

router = Router(tags=["bundles"])
ERRORS: dict[int, Any] = {400: dict, 401: dict, 403: dict, 404: dict}


class PublishIn(Schema):
    version: int
    # Classifiers only; default: the version's pipeline, else its HF config's id2label.
    labels: list[str] | None = None
    confidence_threshold: float | None = None


class BundleOut(Schema):
    id: str
    version: int
    model: str
    model_name: str
    release: int
    status: str
    error: str
    target: str
    size_bytes: int | None
    plaintext_size: int | None
    ciphertext_sha256: str
    record: dict[str, Any] | None
    created_by: str | None
    created_at: datetime
    published_at: datetime | None


class BundleDetailOut(BundleOut):
    signed: dict[str, Any] | None


class BundleList(Schema):
    items: list[BundleOut]
    count: int


def bundle_json(bundle: Bundle) -> dict[str, Any]:
    return {
        "id": bundle.pk,
        "version": bundle.version_id,
        "model": bundle.model,
        "model_name": bundle.version.model.name,
        "release": bundle.release,
        "status": bundle.status,
        "error": bundle.error,
        "target": bundle.target_name,
        "size_bytes": bundle.ciphertext_size,
        "plaintext_size": bundle.plaintext_size,
        "ciphertext_sha256": bundle.ciphertext_sha256,
        "record": bundle.record,
        "created_by": bundle.created_by.get_username() if bundle.created_by else None,
        "created_at": bundle.created_at,
        "published_at": bundle.published_at,
    }


def _bundles() -> Any:
    return Bundle.objects.select_related("version__model", "created_by")


def _bundle(bundle_id: str) -> Bundle:
    return get_object_or_404(_bundles(), pk=bundle_id)


@router.post("/bundles", response={200: BundleOut, 201: BundleOut, **ERRORS})
def publish(request: HttpRequest, body: PublishIn) -> Status[Any]:
    """Publish a ready version as a signed, encrypted bundle (201 new, 200 existing)."""
    require_role(request, Role.OPERATOR)
    version = ModelVersion.objects.select_related("model").filter(pk=body.version).first()
    if version is None:
        raise HttpError(400, f"version {body.version} does not exist")
    try:
        overrides = publish_overrides(version, body.labels, body.confidence_threshold)
        bundle, created = request_publish(version, request.user, overrides)
    except PublishError as exc:
        raise HttpError(400, str(exc)) from None
    return Status(201 if created else 200, bundle_json(_bundle(bundle.pk)))


@router.get("/bundles", response={200: BundleList, **ERRORS})
def list_bundles(
    request: HttpRequest, status: str = "", model: str = "", limit: int = 100
) -> dict[str, Any]:
    bundles = _bundles()
    if status:
        if status not in BundleStatus.values:
            raise HttpError(400, f"status must be one of: {', '.join(BundleStatus.values)}")
        bundles = bundles.filter(status=status)
    if model:
        bundles = bundles.filter(model=model)
    total = bundles.count()
    page = bundles[: max(1, min(limit, 500))]
    return {"items": [bundle_json(b) for b in page], "count": total}


@router.get("/bundles/{bundle_id}", response={200: BundleDetailOut, **ERRORS})
def get_bundle(request: HttpRequest, bundle_id: str) -> dict[str, Any]:
    bundle = _bundle(bundle_id)
    return {**bundle_json(bundle), "signed": signed_target(bundle)}


def _published(bundle_id: str) -> Bundle:
    bundle = _bundle(bundle_id)
    if not bundle.is_published:
        raise HttpError(404, f"bundle {bundle_id} is {bundle.status}, not published")
    return bundle


@router.get("/bundles/{bundle_id}/ciphertext", response={200: None, 206: None, **ERRORS})
def ciphertext(request: HttpRequest, bundle_id: str) -> HttpResponseBase:
    """The encrypted payload (HTTP Range; a presigned redirect on object storage)."""
    require_role(request, Role.OPERATOR)
    bundle = _published(bundle_id)
    return serve_stored(request, bundle.ciphertext_key, f"{bundle.pk}.enc")


@router.get("/bundles/{bundle_id}/export", response={200: None, **ERRORS})
def export(request: HttpRequest, bundle_id: str, device: str = "") -> HttpResponseBase:
    """A tar for offline checks: root chains, image metadata, ciphertext and, with
    `?device=ID`, that device's director targets (`tinyfleet-agent verify`)."""
    require_role(request, Role.OPERATOR)
    bundle = _published(bundle_id)
    target_device = _export_device(device, bundle) if device else None
    out = tempfile.TemporaryFile(dir=settings.TMP_DIR)  # noqa: SIM115 - the response closes it
    write_export(bundle, out, target_device)
    out.seek(0)
    return FileResponse(out, as_attachment=True, filename=f"{bundle.pk}-export.tar")


def _export_device(device_id: str, bundle: Bundle) -> Device:
    found = Device.objects.filter(pk=device_id).first() if _is_uuid(device_id) else None
    if found is None:
        raise HttpError(400, f"device {device_id} does not exist")
    current = director.current_assignment(found)
    if current is None or current.bundle_id != bundle.pk:
        raise HttpError(400, f"bundle {bundle.pk} is not the current assignment of {device_id}")
    return found


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _consistent_image_set() -> dict[str, bytes]:
    # Follow the timestamp's pins so the three files agree even while publishing runs.
    ts = image_repo.latest_row(Repo.IMAGE, KeyRole.TIMESTAMP)
    assert ts is not None
    snap_version = image_repo.load(ts).signed.snapshot_meta.version
    snap = image_repo.row_by_version(Repo.IMAGE, KeyRole.SNAPSHOT, snap_version)
    assert snap is not None
    tgt_version = image_repo.load(snap).signed.meta["targets.json"].version
    tgt = image_repo.row_by_version(Repo.IMAGE, KeyRole.TARGETS, tgt_version)
    assert tgt is not None
    return {
        "timestamp.json": bytes(ts.data),
        "snapshot.json": bytes(snap.data),
        "targets.json": bytes(tgt.data),
    }


def write_export(bundle: Bundle, out: IO[bytes], device: Device | None = None) -> None:
    """Write the export tar of `bundle` to `out` (metadata first, ciphertext last)."""
    manifest = {
        "format": "tinyfleet-export-v1",
        "bundle": bundle.pk,
        "target": bundle.target_name,
        "device": str(device.pk) if device else None,
    }
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, "tinyfleet-export.json", json.dumps(manifest, indent=2).encode())
        for repo in Repo.values:
            for row in image_repo.root_chain(repo):
                _add(tar, f"metadata/{repo}/{row.version}.root.json", bytes(row.data))
        for name, data in _consistent_image_set().items():
            _add(tar, f"metadata/image/{name}", bytes(data))
        if device is not None:
            _add(tar, "metadata/director/targets.json", director.director_targets_bytes(device))
        info = tarfile.TarInfo(bundle.target_name)
        info.size, info.mode, info.mtime = bundle.ciphertext_size or 0, 0o644, int(time.time())
        with default_storage.open(bundle.ciphertext_key, "rb") as src:
            tar.addfile(info, src)
