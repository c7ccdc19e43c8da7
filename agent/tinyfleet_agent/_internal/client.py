"""HTTP client for the server's device API (stdlib only: small and dependency-free).

Every response body is read with a cap, and payload downloads are resumable (HTTP
Range) with the signed length as a hard limit."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LengthExceededError, PayloadTamperedError

API = "/api/device/v1"
MAX_JSON_BYTES = 1 << 20
MAX_METADATA_BYTES = 4 << 20
BLOCK = 1 << 20


class ServerError(Exception):
    """The server could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


class RevokedError(ServerError):
    """The server no longer accepts this device's credential."""


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class DeviceClient:
    def __init__(self, server: str, credential: str | None = None, timeout: float = 30.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http(s) URL, not {server!r}")
        self.server = server.rstrip("/")
        self.credential = credential
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        cap: int = MAX_JSON_BYTES,
    ) -> Response:
        data = None if body is None else json.dumps(body).encode()
        url = self.server + API + path  # http(s) only: checked in __init__
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.credential:
            _add_credential(request, self.credential)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only, checked in __init__
                return Response(
                    response.status, _read_capped(response, cap), dict(response.headers)
                )
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return Response(304, b"", dict(exc.headers))
            message = _error_message(exc)
            if exc.code == 401 and self.credential:
                raise RevokedError(message, exc.code) from None
            raise ServerError(message, exc.code) from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            raise ServerError(f"cannot reach {self.server}: {exc}") from None

    def enroll(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/enroll", body=body).json()
        return result

    def state(self, etag: str | None) -> Response:
        return self._request("GET", "/state", headers={"If-None-Match": etag} if etag else None)

    def metadata(self, repository: str, name: str) -> bytes | None:
        """Signed metadata bytes, or None when the server has no such file (404)."""
        try:
            return self._request(
                "GET", f"/metadata/{repository}/{name}", cap=MAX_METADATA_BYTES
            ).body
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise

    def events(self, events: list[dict[str, Any]]) -> None:
        self._request("POST", "/events", body={"events": events})

    def telemetry(self, batch: dict[str, Any]) -> None:
        self._request("POST", "/telemetry", body=batch)

    def download(self, bundle_id: str, dst: Path, length: int, sha256: str) -> None:
        """Resume or start the download into `dst` (a `.part` file is kept between tries).

        Raises:
            LengthExceededError: the server sent more than the signed length.
            PayloadTamperedError: the finished file does not hash to the signed digest.
            ServerError: network or HTTP failure (the partial file is kept to resume).
        """
        part = dst.with_name(dst.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > length:
            part.unlink()
            have = 0
        if have < length:
            self._fetch_range(bundle_id, part, have, length)
        digest = hashlib.sha256()
        with part.open("rb") as handle:
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
        if part.stat().st_size != length or digest.hexdigest() != sha256:
            part.unlink()
            raise PayloadTamperedError("downloaded payload does not match its signed digest")
        os.replace(part, dst)

    def _fetch_range(self, bundle_id: str, part: Path, start: int, length: int) -> None:
        url = f"{self.server}{API}/bundles/{bundle_id}/payload"
        request = urllib.request.Request(url)  # noqa: S310 - http(s) only
        if self.credential:
            _add_credential(request, self.credential)
        if start:
            request.add_header("Range", f"bytes={start}-")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            raise ServerError(_error_message(exc), exc.code) from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            raise ServerError(f"download failed: {exc}") from None
        with response:
            if start and response.status != 206:
                start = 0  # the server ignored Range: start over
            mode = "ab" if start else "wb"
            written = start
            with part.open(mode) as out:
                while block := _read_block(response, written):
                    written += len(block)
                    if written > length:
                        raise LengthExceededError("server sent more than the signed length")
                    # A local write error (disk full) propagates as the OSError it is,
                    # not as a network failure: the updater handles it differently.
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
        if written < length:
            # The connection ended early: keep the partial file, the next try resumes.
            raise ServerError(f"download interrupted at {written} of {length} bytes")


def _add_credential(request: urllib.request.Request, credential: str) -> None:
    """Attach the device credential to this request only.

    urllib copies headers set with `add_header` onto a redirect, wherever it points; an
    unredirected header stays behind. The payload route redirects to presigned object
    storage URLs: the credential must not travel there (another origin), and S3 refuses
    a request carrying both a query signature and an Authorization header.
    """
    request.add_unredirected_header("Authorization", f"Bearer {credential}")


def _read_block(response: Any, written: int) -> bytes:
    try:
        block: bytes = response.read(BLOCK)
    except (OSError, TimeoutError, http.client.HTTPException) as exc:
        raise ServerError(f"download interrupted at {written} bytes: {exc}") from None
    return block


def _read_capped(response: Any, cap: int) -> bytes:
    data: bytes = response.read(cap + 1)
    if len(data) > cap:
        raise LengthExceededError(f"response larger than {cap} bytes")
    return data


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(8192))
        return f"HTTP {exc.code}: {body.get('error', body)}"
    except (ValueError, OSError, AttributeError):
        return f"HTTP {exc.code}"
