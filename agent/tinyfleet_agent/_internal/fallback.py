"""Forwarding low-confidence inputs to an operator's fallback endpoint.

Off unless the server's desired state names a fallback URL (the operator enabled it for
one of the device's groups). This is the one path where raw inputs leave the device, so
it is explicit: only inputs the local model marked `low_confidence` are sent, only to an
https URL or a loopback http one, and every input is counted in telemetry as
`forwarded`, `forward_failed` or `forward_dropped`.

Forwarding never delays the local answer: `submit` only puts the job on a bounded queue
(a full queue drops it, counted) and one background thread POSTs jobs one by one. The
device API credential is never sent: it would let the endpoint act as the device towards
the tinyfleet server. The request carries the device id in `X-Tinyfleet-Device`; the
endpoint authenticates the network (TLS, firewall) as it sees fit.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import queue
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("tinyfleet_agent.fallback")

__all__ = ["FallbackForwarder", "FallbackUrlError", "check_fallback_url"]

QUEUE_CAPACITY = 64
TIMEOUT_S = 5.0
MAX_URL_CHARS = 500

Count = Callable[[str, str, int], None]  # (bundle, "forwarded" | ..., n)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead the inputs to a URL check_fallback_url would refuse.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class FallbackUrlError(ValueError):
    """The fallback URL is not https and not loopback http."""


def is_loopback_name(host: str) -> bool:
    """`localhost` or a loopback IP literal (no DNS: a name could point anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_fallback_url(url: str) -> str:
    """Return `url` if it is https, or http to a loopback address.

    Raises:
        FallbackUrlError: anything else (plain http over a network would expose inputs).
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise FallbackUrlError(f"fallback URL must be 1-{MAX_URL_CHARS} characters")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.username or parts.password:
        raise FallbackUrlError("fallback URL needs a host and no user:password")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_name(host)):
        return url
    raise FallbackUrlError("fallback URL must be https, or http to a loopback address")


class FallbackForwarder:
    """A bounded queue and one sender thread; `configure(None)` turns it off."""

    def __init__(
        self,
        *,
        device_id: str,
        count: Count,
        capacity: int = QUEUE_CAPACITY,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.device_id, self._count, self._timeout = device_id, count, timeout
        self._url: str | None = None
        self._jobs: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str | None:
        return self._url

    def configure(self, url: str | None) -> None:
        """Use `url` from now on (None: off). An unacceptable URL turns forwarding off."""
        if url is not None:
            try:
                url = check_fallback_url(url)
            except FallbackUrlError as exc:
                log.warning("fallback refused: %s", exc)
                url = None
        with self._lock:
            if url != self._url:
                log.info("fallback %s", f"on: {url}" if url else "off")
            self._url = url
            if url and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="fallback", daemon=True)
                self._thread.start()

    def submit(
        self, bundle: str, prediction_id: str, inputs: Sequence[Any], outputs: Sequence[Any]
    ) -> str:
        """Queue the low-confidence items of one request; never blocks.

        Returns "off", "queued" or "dropped" (what the local API tells its caller).
        """
        low = [i for i, o in enumerate(outputs) if isinstance(o, dict) and o.get("low_confidence")]
        if not low or self._url is None:
            return "off"
        job = {
            "device_id": self.device_id,
            "bundle": bundle,
            "prediction_id": prediction_id,
            "inputs": [inputs[i] for i in low],
            "local_outputs": [outputs[i] for i in low],
        }
        try:
            self._jobs.put_nowait((bundle, job))
        except queue.Full:
            self._count(bundle, "forward_dropped", len(low))
            return "dropped"
        return "queued"

    def close(self) -> None:
        if self._thread is not None:
            # A full queue: the daemon thread simply ends with the process.
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait(None)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            bundle, job = item
            url = self._url
            n = len(job["inputs"])
            if url is None:  # turned off while queued: not sent, and counted as such
                self._count(bundle, "forward_dropped", n)
                continue
            try:
                self._post(url, job)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("fallback request failed: %s", exc)
                self._count(bundle, "forward_failed", n)
            else:
                self._count(bundle, "forwarded", n)

    def _post(self, url: str, job: dict[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 - https or loopback http, checked
            url,
            data=json.dumps(job).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "X-Tinyfleet-Device": self.device_id},
        )
        with _OPENER.open(request, timeout=self._timeout) as response:
            response.read(65536)
            if not 200 <= response.status < 300:
                raise ValueError(f"fallback endpoint answered HTTP {response.status}")
