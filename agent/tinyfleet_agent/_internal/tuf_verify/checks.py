"""Length caps, parsing, signature and expiry checks shared by every role."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError

# python-tuf documents these names here but has no __all__ for them, which
# mypy --strict reads as "not re-exported".
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError, SerializationError

from ..errors import (
    BadSignatureError,
    ExpiredMetadataError,
    InconsistentMetadataError,
    LengthExceededError,
    MalformedMetadataError,
)
from ..limits import Limits

_S = TypeVar("_S", Root, Timestamp, Snapshot, Targets)


def _check_size(data: bytes, cap: int, what: str) -> None:
    if not isinstance(data, bytes):
        raise TypeError(f"{what} must be bytes")
    if len(data) > cap:
        raise LengthExceededError(f"{what} is {len(data)} bytes, cap {cap}")


def _load(data: bytes, role: type[_S], cap: int, what: str) -> Metadata[_S]:
    _check_size(data, cap, what)
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as e:
        raise MalformedMetadataError(f"{what} is not valid metadata: {e}") from None
    if not isinstance(md.signed, role):
        raise MalformedMetadataError(f"{what} is {md.signed.type}, expected {role.type}")
    return md


def _verify(delegator: Root, role: str, md: Metadata[Any], what: str) -> None:
    try:
        delegator.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as e:
        raise BadSignatureError(f"{what}: {e}") from None
    except (SerializationError, ValueError) as e:
        raise MalformedMetadataError(f"{what} cannot be verified: {e}") from None


def _check_expiry(signed: Signed, now: datetime, what: str) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if signed.is_expired(now):
        raise ExpiredMetadataError(f"{what} expired at {signed.expires.isoformat()}")


def _load_trusted_root(data: bytes, limits: Limits) -> Metadata[Root]:
    md = _load(data, Root, limits.max_root_bytes, "root")
    _verify(md.signed, Root.type, md, "root (self-signed)")
    return md


def _role_keys(root: Root, role: str) -> tuple[frozenset[str], int]:
    r = root.roles[role]
    return frozenset(r.keyids), r.threshold


def _load_pinned(data: bytes, meta: MetaFile, role: type[_S], cap: int, what: str) -> Metadata[_S]:
    # Hashes are checked before parsing: nothing unpinned reaches the JSON parser.
    _check_size(data, cap, what)
    try:
        meta.verify_length_and_hashes(data)
    except LengthOrHashMismatchError as e:
        raise InconsistentMetadataError(f"{what} does not match its pinned hash: {e}") from None
    return _load(data, role, cap, what)
