"""Image metadata, director targets and the assignment both repositories agree on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# python-tuf documents these names here but has no __all__ for them, which
# mypy --strict reads as "not re-exported".
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from ..errors import (
    InconsistentMetadataError,
    MalformedMetadataError,
    MixAndMatchError,
    RollbackError,
    WrongDeviceError,
)
from ..limits import DEFAULT_LIMITS, Limits
from ..record import (
    NAMESPACE,
    BundleRecord,
    record_of_target,
    strip_director_fields,
)
from .checks import _check_expiry, _load, _load_pinned, _verify
from .state import TrustedState


@dataclass(frozen=True)
class ImageMetadata:
    """Verified, unexpired, mutually consistent image repository metadata."""

    timestamp: Timestamp
    snapshot: Snapshot
    targets: Targets


@dataclass(frozen=True)
class DirectorTargets:
    """Verified director targets metadata for this device."""

    version: int
    device_id: str
    target: TargetFile
    wrapped_key: bytes


@dataclass(frozen=True)
class Assignment:
    """A bundle this device may install: both repositories agree on it."""

    target_path: str
    length: int
    sha256: str
    record: BundleRecord
    wrapped_key: bytes
    device_id: str

    @property
    def bundle_id(self) -> str:
        """The record's bundle id (bound into the wrapped key)."""
        return self.record.bundle_id

    @property
    def release(self) -> int:
        """The record's release number (bound into the wrapped key)."""
        return self.record.release


def verify_image_metadata(
    state: TrustedState,
    timestamp: bytes,
    snapshot: bytes,
    targets: bytes,
    now: datetime,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> ImageMetadata:
    """Verify the image repository's timestamp, snapshot and targets.

    Order per the TUF client workflow: root expiry; each role's signature
    threshold, then rollback, then expiry; snapshot pinned by the timestamp's
    length and sha256 (required); targets pinned by the snapshot's version
    (and its hashes, when present).

    Raises:
        LengthExceededError, MalformedMetadataError: oversized or malformed.
        BadSignatureError: a role is not signed by its threshold of root keys.
        RollbackError: a version is lower than already trusted.
        InconsistentMetadataError: versions or hashes do not chain up.
        ExpiredMetadataError: the root or a role has expired (freeze).
    """
    root = state.image_root.signed
    _check_expiry(root, now, "image root")
    ts_md = _load(timestamp, Timestamp, limits.max_timestamp_bytes, "timestamp")
    _verify(root, Timestamp.type, ts_md, "timestamp")
    ts = ts_md.signed
    snap_meta = ts.snapshot_meta
    if ts.version < state.timestamp_version or snap_meta.version < state.snapshot_version:
        raise RollbackError(f"timestamp v{ts.version} or its snapshot version rolls back")
    _check_expiry(ts, now, "timestamp")
    if snap_meta.length is None or not snap_meta.hashes or "sha256" not in snap_meta.hashes:
        raise InconsistentMetadataError("timestamp must pin the snapshot's length and sha256")
    snap_md = _load_pinned(snapshot, snap_meta, Snapshot, limits.max_snapshot_bytes, "snapshot")
    _verify(root, Snapshot.type, snap_md, "snapshot")
    snap = snap_md.signed
    if snap.version != snap_meta.version:
        raise InconsistentMetadataError(f"timestamp pins snapshot v{snap_meta.version}")
    targets_meta = snap.meta.get(f"{Targets.type}.json")
    if targets_meta is None:
        raise InconsistentMetadataError("snapshot does not list targets.json")
    if targets_meta.version < state.targets_version:
        raise RollbackError(f"targets v{targets_meta.version} is below v{state.targets_version}")
    _check_expiry(snap, now, "snapshot")
    tgt_md = _load_pinned(targets, targets_meta, Targets, limits.max_targets_bytes, "targets")
    _verify(root, Targets.type, tgt_md, "targets")
    tgt = tgt_md.signed
    if tgt.version != targets_meta.version:
        raise InconsistentMetadataError(f"snapshot pins targets v{targets_meta.version}")
    _check_expiry(tgt, now, "targets")
    state.timestamp_version = ts.version
    state.snapshot_version = snap.version
    state.targets_version = tgt.version
    return ImageMetadata(timestamp=ts, snapshot=snap, targets=tgt)


def verify_director_targets(
    state: TrustedState,
    director_targets: bytes,
    device_id: str,
    now: datetime,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> DirectorTargets:
    """Verify this device's director targets metadata (exactly one target).

    Raises:
        LengthExceededError, MalformedMetadataError: oversized or malformed,
            or not exactly one target with a hex `wrapped_key`.
        BadSignatureError: not signed by the director root's targets threshold.
        RollbackError: version lower than already trusted.
        ExpiredMetadataError: the director root or targets expired (freeze).
        WrongDeviceError: issued for another device.
    """
    root = state.director_root.signed
    _check_expiry(root, now, "director root")
    what = "director targets"
    md = _load(director_targets, Targets, limits.max_director_targets_bytes, what)
    _verify(root, Targets.type, md, what)
    signed = md.signed
    if signed.version < state.director_targets_version:
        raise RollbackError(f"{what} v{signed.version} is below v{state.director_targets_version}")
    _check_expiry(signed, now, what)
    if len(signed.targets) != 1:
        raise MalformedMetadataError(f"{what} must name exactly one target")
    target = next(iter(signed.targets.values()))
    ns = target.custom.get(NAMESPACE) if isinstance(target.custom, dict) else None
    if not isinstance(ns, dict):
        raise MalformedMetadataError(f"{what} target has no custom[{NAMESPACE!r}]")
    if ns.get("device_id") != device_id:
        raise WrongDeviceError(f"{what} is for device {ns.get('device_id')!r}")
    try:
        wrapped = bytes.fromhex(ns["wrapped_key"])
    except (KeyError, TypeError, ValueError):
        raise MalformedMetadataError(f"{what} carries no hex wrapped_key") from None
    state.director_targets_version = signed.version
    return DirectorTargets(signed.version, device_id, target, wrapped)


def match_assignment(
    state: TrustedState,
    image: ImageMetadata,
    director: DirectorTargets,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> Assignment:
    """Cross-check director and image targets; return the assignment.

    Raises:
        MixAndMatchError: the image repository does not sign the director's
            target with identical length, hashes and custom fields.
        InvalidRecordError: the signed record is invalid or disagrees with
            the target's length and sha256.
        RollbackError: the release is below the one installed for the model.
    """
    d_target = director.target
    i_target = image.targets.targets.get(d_target.path)
    if i_target is None:
        raise MixAndMatchError(f"image repository does not sign {d_target.path!r}")
    if (d_target.length, d_target.hashes) != (i_target.length, i_target.hashes):
        raise MixAndMatchError(f"director and image disagree on length/hashes of {d_target.path!r}")
    d_fields = dict(d_target.unrecognized_fields, custom=strip_director_fields(d_target.custom))
    if d_fields != i_target.unrecognized_fields:
        raise MixAndMatchError(f"director and image disagree on custom fields of {d_target.path!r}")
    record = record_of_target(i_target.custom, i_target.length, i_target.hashes, limits=limits)
    installed = state.installed_release(record.model)
    if record.release < installed:
        raise RollbackError(f"{record.model} release {record.release} < installed {installed}")
    return Assignment(
        target_path=d_target.path,
        length=i_target.length,
        sha256=i_target.hashes["sha256"],
        record=record,
        wrapped_key=director.wrapped_key,
        device_id=director.device_id,
    )


def resolve_assignment(
    state: TrustedState,
    *,
    timestamp: bytes,
    snapshot: bytes,
    targets: bytes,
    director_targets: bytes,
    device_id: str,
    now: datetime,
    limits: Limits = DEFAULT_LIMITS,
) -> Assignment:
    """Verify both repositories and return what this device must install.

    Raises:
        Every error of `verify_image_metadata`, `verify_director_targets` and
        `match_assignment`; all derive from `BundleError`.
    """
    image = verify_image_metadata(state, timestamp, snapshot, targets, now, limits=limits)
    director = verify_director_targets(state, director_targets, device_id, now, limits=limits)
    return match_assignment(state, image, director, limits=limits)
