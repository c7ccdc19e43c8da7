"""Typed errors of the bundle format and its verification.

Every error derives from `BundleError` and carries a stable, machine-readable
`reason` string. The agent reports `reason` in telemetry and the server shows
it to operators, so these strings are part of the public surface: never
rename one, only add new ones.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadSignatureError",
    "BadVersionError",
    "BundleError",
    "ExpiredMetadataError",
    "InconsistentMetadataError",
    "InvalidRecordError",
    "KeyUnwrapError",
    "LengthExceededError",
    "MalformedMetadataError",
    "MixAndMatchError",
    "PayloadExtendedError",
    "PayloadTamperedError",
    "PayloadTruncatedError",
    "RollbackError",
    "WrongDeviceError",
]


class BundleError(Exception):
    """Base class of every bundle, payload and metadata verification error."""

    reason: ClassVar[str] = "bundle-error"


class PayloadTamperedError(BundleError):
    """A payload chunk failed authentication or a payload digest mismatched."""

    reason: ClassVar[str] = "payload-tampered"


class PayloadTruncatedError(PayloadTamperedError):
    """The payload is shorter than the signed length (or lost its last chunk)."""

    reason: ClassVar[str] = "payload-truncated"


class PayloadExtendedError(PayloadTamperedError):
    """Data follows the last chunk of the payload."""

    reason: ClassVar[str] = "payload-extended"


class LengthExceededError(BundleError):
    """A download or a metadata file is longer than its cap."""

    reason: ClassVar[str] = "length-exceeded"


class KeyUnwrapError(BundleError):
    """The wrapped content key does not open for this device and bundle."""

    reason: ClassVar[str] = "key-unwrap-failed"


class MalformedMetadataError(BundleError):
    """Metadata bytes are not valid TUF metadata of the expected type."""

    reason: ClassVar[str] = "malformed-metadata"


class BadSignatureError(BundleError):
    """Metadata is not signed by a threshold of the keys trusted for its role."""

    reason: ClassVar[str] = "bad-signature"


class ExpiredMetadataError(BundleError):
    """Trusted metadata has expired: updates freeze, inference goes on."""

    reason: ClassVar[str] = "expired"


class RollbackError(BundleError):
    """A metadata version or a release number is lower than already trusted."""

    reason: ClassVar[str] = "rollback"


class BadVersionError(BundleError):
    """A metadata version skips ahead where the next one is required."""

    reason: ClassVar[str] = "bad-version"


class InconsistentMetadataError(BundleError):
    """Timestamp, snapshot and targets do not agree on versions or hashes."""

    reason: ClassVar[str] = "inconsistent-metadata"


class MixAndMatchError(BundleError):
    """The director names a target the image repository does not sign identically."""

    reason: ClassVar[str] = "mix-and-match"


class WrongDeviceError(BundleError):
    """The director metadata was issued for another device."""

    reason: ClassVar[str] = "wrong-device"


class InvalidRecordError(BundleError):
    """A bundle record or cipher parameters fail validation."""

    reason: ClassVar[str] = "invalid-record"
