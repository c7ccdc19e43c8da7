"""Streaming upload handling: every uploaded file goes to a temporary file on disk in
chunks, is hashed on the way, and is cut off at the configured size cap, so server
memory does not grow with the upload."""

from __future__ import annotations

import hashlib
from typing import Any, cast

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.utils.datastructures import MultiValueDict

UPLOAD_TOO_LARGE_ATTR = "tinyfleet_upload_too_large"
UPLOAD_FORBIDDEN_ATTR = "tinyfleet_upload_forbidden"


def _may_upload(request: HttpRequest) -> bool:
    """Operators may upload: through their session or a bearer API token."""
    from accounts.models import ApiToken, Role, has_role

    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        token = ApiToken.authenticate(header[7:].strip())
        return token is not None and has_role(token.user, Role.OPERATOR)
    return has_role(getattr(request, "user", None), Role.OPERATOR)


class HashedUploadedFile(TemporaryUploadedFile):
    sha256: str


class HashingCappedUploadHandler(TemporaryFileUploadHandler):
    # Large chunks: fewer Python-level copies per GiB (the parser takes the smallest
    # chunk size of all handlers).
    chunk_size = 1024 * 1024

    def handle_raw_input(
        self,
        input_data: Any,
        META: Any,
        content_length: int,
        boundary: Any,
        encoding: str | None = None,
    ) -> tuple[QueryDict, MultiValueDict[str, Any]] | None:
        """Read nothing when the caller may not upload at all: the view answers 403."""
        if self.request is not None and not _may_upload(self.request):
            setattr(self.request, UPLOAD_FORBIDDEN_ATTR, True)
            return QueryDict(), MultiValueDict()
        return None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self._digest = hashlib.sha256()
        self._received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._received += len(raw_data)
        if self._received > settings.MAX_UPLOAD_SIZE:
            if self.request is not None:
                setattr(self.request, UPLOAD_TOO_LARGE_ATTR, True)
            self.file.close()  # deletes the temporary file
            raise StopUpload(connection_reset=True)
        self._digest.update(raw_data)
        self.file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> HashedUploadedFile:
        hashed = cast(HashedUploadedFile, self.file)
        hashed.seek(0)
        hashed.size = file_size
        hashed.sha256 = self._digest.hexdigest()
        return hashed


def upload_too_large(request: HttpRequest) -> bool:
    return bool(getattr(request, UPLOAD_TOO_LARGE_ATTR, False))


def too_large_message() -> str:
    cap = settings.MAX_UPLOAD_SIZE
    shown = f"{cap / 1024**2:,.0f} MiB" if cap >= 1024**2 else f"{cap / 1024:,.0f} KiB"
    return f"upload exceeds the size limit of {shown} ({cap} bytes)"


class RequestSizeLimitMiddleware:
    """Refuse a declared body over the cap before reading any of it."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = request.META.get("CONTENT_LENGTH") or "0"
        slack = 1024**2  # multipart boundaries and form fields around the file
        if declared.isdigit() and int(declared) > settings.MAX_UPLOAD_SIZE + slack:
            return JsonResponse({"error": too_large_message()}, status=413)
        response: HttpResponse = self.get_response(request)
        return response
