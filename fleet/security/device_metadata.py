"""What devices fetch: trusted roots, image and director metadata, the ciphertext.

Metadata is served byte for byte as it was signed, with a strong ETag so polling
devices get 304s. The ciphertext is streamed from local storage with HTTP Range
support (resumable downloads), or handed out as a presigned URL on object storage.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import default_storage
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase

from fleet.models import Bundle, BundleStatus, Device
from fleet.models.keys import KeyRole, Repo
from fleet.security import director, image_repo

_NAME = re.compile(r"(?:([1-9]\d{0,9})\.)?(root|timestamp|snapshot|targets)\.json")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_BLOCK = 1 << 20


class MetadataNotFoundError(LookupError):
    """No such metadata file (unknown name, pruned version, no assignment)."""


class PayloadForbiddenError(PermissionError):
    """The device asked for a bundle it was not assigned."""


def trusted_roots() -> dict[str, Any]:
    """The current image and director roots (JSON), for enrollment responses."""
    image_repo.ensure_repositories()
    return {repo: json.loads(bytes(image_repo.current_root_row(repo).data)) for repo in Repo.values}


def _parse(name: str) -> tuple[int | None, str]:
    match = _NAME.fullmatch(name)
    if match is None:
        raise MetadataNotFoundError(f"unknown metadata file {name!r}")
    version = int(match.group(1)) if match.group(1) else None
    return version, match.group(2)


def _row_bytes(repo: str, role: str, version: int | None, device: Any = None) -> bytes:
    if version is None:
        row = image_repo.latest_row(repo, role, device)
    else:
        row = image_repo.row_by_version(repo, role, version, device)
    if row is None:
        raise MetadataNotFoundError(f"no {repo} {role} metadata version {version or 'latest'}")
    return bytes(row.data)


def image_metadata_bytes(name: str) -> bytes:
    """`N.root.json`, `timestamp.json`, `[N.]snapshot.json` or `[N.]targets.json`.

    Raises:
        MetadataNotFoundError: unknown name or version.
    """
    version, role = _parse(name)
    if role == KeyRole.TIMESTAMP and version is not None:
        raise MetadataNotFoundError("the timestamp is only served as timestamp.json")
    image_repo.ensure_repositories()
    return _row_bytes(Repo.IMAGE, role, version)


def director_metadata_bytes(device: Device, name: str) -> bytes:
    """`N.root.json` of the director, or `targets.json` for this device.

    Raises:
        MetadataNotFoundError: unknown name, or no current assignment for `targets.json`.
    """
    version, role = _parse(name)
    image_repo.ensure_repositories()
    if role == KeyRole.ROOT:
        return _row_bytes(Repo.DIRECTOR, role, version)
    if role != KeyRole.TARGETS:
        raise MetadataNotFoundError("the director serves only root and targets metadata")
    if version is not None:
        return _row_bytes(Repo.DIRECTOR, role, version, device)
    try:
        return director.director_targets_bytes(device)
    except director.NotAssignedError as exc:
        raise MetadataNotFoundError(str(exc)) from None


def metadata_response(request: HttpRequest, data: bytes) -> HttpResponse:
    """The exact signed bytes, with an ETag so unchanged metadata costs a 304."""
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(data, content_type="application/json")
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"
    return response


def assigned_bundle(device: Device, bundle_id: str) -> Bundle:
    """The published bundle `bundle_id` if it is the device's current or previous one.

    Raises:
        MetadataNotFoundError: no such published bundle.
        PayloadForbiddenError: the bundle is not assigned to this device.
    """
    bundle = Bundle.objects.filter(pk=bundle_id, status=BundleStatus.PUBLISHED).first()
    if bundle is None:
        raise MetadataNotFoundError(f"no published bundle {bundle_id!r}")
    if device.revoked_at is not None or bundle.pk not in director.recent_bundle_ids(device):
        raise PayloadForbiddenError(f"bundle {bundle_id} is not assigned to this device")
    return bundle


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `bytes=` range; None to send everything.

    Raises:
        ValueError: the range cannot be satisfied (answer 416).
    """
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # multiple or malformed ranges: the full body is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ValueError("range not satisfiable")
    return start, end


def _segment(path: str, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            block = f.read(min(_BLOCK, length))
            if not block:
                return
            length -= len(block)
            yield block


def serve_stored(request: HttpRequest, key: str, filename: str) -> HttpResponseBase:
    """Stream a stored file with Range support, or redirect to a presigned URL."""
    try:
        path = default_storage.path(key)
    except NotImplementedError:
        # Object storage: the presigned URL supports Range itself and spares the server.
        return HttpResponseRedirect(default_storage.url(key))
    size = default_storage.size(key)
    try:
        span = _byte_range(request.headers.get("Range", ""), size)
    except ValueError:
        refused = HttpResponse(status=416)
        refused["Content-Range"] = f"bytes */{size}"
        return refused
    response: HttpResponseBase
    if span is None:
        response = FileResponse(
            open(path, "rb"),  # noqa: SIM115 - FileResponse closes it
            as_attachment=True,
            filename=filename,
            content_type="application/octet-stream",
        )
    else:
        start, end = span
        response = StreamingHttpResponse(
            _segment(path, start, end - start + 1),
            status=206,
            content_type="application/octet-stream",
        )
        response["Content-Length"] = str(end - start + 1)
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    return response
