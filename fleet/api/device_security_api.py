"""Device-facing metadata and payload routes, mounted on the device API (`/api/device/v1/`).

The device API has already authenticated the device (`request.auth`). Devices fetch:

    GET metadata/image/{N.root.json | timestamp.json | [N.]snapshot.json | [N.]targets.json}
    GET metadata/director/{N.root.json | targets.json}     (targets: this device's)
    GET bundles/{bundle_id}/payload                        (Range; assigned devices only)
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from ninja.errors import HttpError

from fleet.models import Device
from fleet.security.device_metadata import (
    MetadataNotFoundError,
    PayloadForbiddenError,
    assigned_bundle,
    director_metadata_bytes,
    image_metadata_bytes,
    metadata_response,
    serve_stored,
)

router = Router(tags=["device security"])


def _device(request: HttpRequest) -> Device:
    device = getattr(request, "auth", None)
    if not isinstance(device, Device):
        raise HttpError(401, "unknown or revoked device credential")
    return device


@router.get(
    "/metadata/image/{name}",
    response={200: None, 304: None, 404: dict},
    summary="Image repository metadata, byte for byte as signed",
)
def image_metadata(request: HttpRequest, name: str) -> HttpResponse:
    _device(request)
    try:
        return metadata_response(request, image_metadata_bytes(name))
    except MetadataNotFoundError as exc:
        raise HttpError(404, str(exc)) from None


@router.get(
    "/metadata/director/{name}",
    response={200: None, 304: None, 404: dict},
    summary="Director root, or this device's director targets (404 when nothing is assigned)",
)
def director_metadata(request: HttpRequest, name: str) -> HttpResponse:
    device = _device(request)
    try:
        return metadata_response(request, director_metadata_bytes(device, name))
    except MetadataNotFoundError as exc:
        raise HttpError(404, str(exc)) from None


@router.get(
    "/bundles/{bundle_id}/payload",
    response={200: None, 206: None, 302: None, 403: dict, 404: dict, 416: None},
    summary="The encrypted payload of a bundle assigned to this device (HTTP Range)",
)
def bundle_payload(request: HttpRequest, bundle_id: str) -> HttpResponseBase:
    device = _device(request)
    try:
        bundle = assigned_bundle(device, bundle_id)
    except MetadataNotFoundError as exc:
        raise HttpError(404, str(exc)) from None
    except PayloadForbiddenError as exc:
        raise HttpError(403, str(exc)) from None
    return serve_stored(request, bundle.ciphertext_key, f"{bundle.pk}.enc")
