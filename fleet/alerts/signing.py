"""Webhook signatures: HMAC-SHA256 over the timestamp and the exact body (no Django).

A receiver recomputes `hmac_sha256(secret, f"{timestamp}." + body)` and compares it in
constant time with the `X-Tinyfleet-Signature` header (`sha256=<hex>`), then refuses a
timestamp older than its tolerance, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Tinyfleet-Signature"
TIMESTAMP_HEADER = "X-Tinyfleet-Timestamp"
DEFAULT_TOLERANCE_S = 300


class SignatureError(ValueError):
    """A webhook request whose signature or timestamp does not check out."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def verify(
    secret: str,
    body: bytes,
    timestamp_header: str,
    signature_header: str,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> None:
    """Check a received webhook (what a receiver does; used by our tests too).

    Raises:
        SignatureError: malformed or stale timestamp, or a signature that does not match.
    """
    try:
        timestamp = int(timestamp_header)
    except ValueError as exc:
        raise SignatureError("the timestamp header is not a whole number") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"the timestamp is more than {tolerance_s} s away from now")
    if not hmac.compare_digest(signature(secret, timestamp, body), signature_header):
        raise SignatureError("the signature does not match the body")
