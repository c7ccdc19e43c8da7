"""Device-side Uptane-style verification on python-tuf's Metadata API.

Two repositories are trusted, each through its own root:

* the image repository (root, timestamp, snapshot, targets; offline targets
  key) signs every bundle as a target whose `custom["tinyfleet"]["record"]`
  holds the bundle record;
* the director (online key) signs per-device targets metadata naming the one
  bundle the device must run, with the same length, hashes and custom fields,
  plus `device_id` and the HPKE-wrapped content key.

A device accepts an assignment only when both agree, so a compromised
director alone cannot install anything the image repository did not sign.

Everything here is pure: bytes and a reference time in, verified objects or a
typed `BundleError` out. python-tuf's own `TrustedMetadataSet` is internal API
and reads the clock itself, hence this small verifier. Version floors in
`TrustedState` are only raised after a whole role chain verifies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError

# python-tuf documents these names here but has no __all__ for them, which
# mypy --strict reads as "not re-exported".
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError, SerializationError

from .errors import (
    BadSignatureError,
    BadVersionError,
    ExpiredMetadataError,
    InconsistentMetadataError,
    LengthExceededError,
    MalformedMetadataError,
    MixAndMatchError,
    RollbackError,
    WrongDeviceError,
)
from .limits import DEFAULT_LIMITS, Limits
from .record import (
    NAMESPACE,
    BundleRecord,
    canonical_json,
    record_of_target,
    strip_director_fields,
)

__all__ = [
    "Assignment",
    "DirectorTargets",
    "ImageMetadata",
    "TrustedState",
    "match_assignment",
    "resolve_assignment",
    "update_root",
    "update_root_chain",
    "verify_director_targets",
    "verify_image_metadata",
]

_STATE_SCHEMA = 1
_S = TypeVar("_S", Root, Timestamp, Snapshot, Targets)
Repository = Literal["image", "director"]


@dataclass
class TrustedState:
    """What the device trusts between runs: roots, version floors, releases.

    Mutated only by the functions of this module, and only after a check
    passed; persist it with `to_json()` after every successful call.
    """

    image_root: Metadata[Root]
    director_root: Metadata[Root]
    timestamp_version: int = 0
    snapshot_version: int = 0
    targets_version: int = 0
    director_targets_version: int = 0
    installed_releases: dict[str, int] = field(default_factory=dict)

    @classmethod
    def bootstrap(
        cls, image_root: bytes, director_root: bytes, *, limits: Limits = DEFAULT_LIMITS
    ) -> TrustedState:
        """Start from roots shipped with the device (trust on provisioning).

        Raises:
            LengthExceededError, MalformedMetadataError, BadSignatureError:
                a root is oversized, malformed or not signed by its own keys.
        """
        return cls(
            image_root=_load_trusted_root(image_root, limits),
            director_root=_load_trusted_root(director_root, limits),
        )

    def root(self, repository: Repository) -> Metadata[Root]:
        """Return the trusted root metadata of `repository`."""
        return self.image_root if repository == "image" else self.director_root

    def installed_release(self, model: str) -> int:
        """Return the highest release installed for `model` (0 if none)."""
        return self.installed_releases.get(model, 0)

    def record_installed(self, model: str, release: int) -> None:
        """Raise the release floor of `model` after a successful install.

        Raises:
            RollbackError: `release` is below the installed one.
        """
        if release < self.installed_release(model):
            raise RollbackError(f"{model} release {release} is below the installed one")
        self.installed_releases[model] = release

    def to_json(self) -> bytes:
        """Serialise for persistence (write it atomically)."""
        return canonical_json(
            {
                "schema": _STATE_SCHEMA,
                "image_root": json.loads(self.image_root.to_bytes()),
                "director_root": json.loads(self.director_root.to_bytes()),
                "versions": {name: getattr(self, name) for name in _VERSION_FIELDS},
                "installed_releases": self.installed_releases,
            }
        )

    @classmethod
    def from_json(cls, data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> TrustedState:
        """Load persisted state; roots are re-verified against themselves.

        Raises:
            LengthExceededError: the state is larger than `limits.max_state_bytes`.
            MalformedMetadataError: the state or a root is malformed.
            BadSignatureError: a stored root no longer verifies (corruption).
        """
        _check_size(data, limits.max_state_bytes, "trusted state")
        try:
            obj = json.loads(data)
            versions = {k: _non_negative(obj["versions"][k]) for k in _VERSION_FIELDS}
            releases = {str(k): _non_negative(v) for k, v in obj["installed_releases"].items()}
            if obj["schema"] != _STATE_SCHEMA:
                raise ValueError("unsupported schema")
            roots = [canonical_json(obj[k]) for k in ("image_root", "director_root")]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise MalformedMetadataError(f"trusted state is malformed: {e}") from None
        return cls(
            image_root=_load_trusted_root(roots[0], limits),
            director_root=_load_trusted_root(roots[1], limits),
            installed_releases=releases,
            **versions,
        )


_VERSION_FIELDS = (
    "timestamp_version",
    "snapshot_version",
    "targets_version",
    "director_targets_version",
)


def _non_negative(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("versions and releases must be integers >= 0")
    return value


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


def update_root(
    state: TrustedState,
    new_root: bytes,
    *,
    repository: Repository = "image",
    limits: Limits = DEFAULT_LIMITS,
) -> Root:
    """Rotate to root version N+1 of `repository`.

    The new root must be signed by a threshold of the old root's root keys and
    of its own. Intermediate roots may be expired (expiry of the final root is
    checked on use). When a role's keys change, its version floor is reset, as
    TUF prescribes for fast-forward attack recovery.

    Raises:
        LengthExceededError, MalformedMetadataError: oversized or malformed.
        RollbackError: the version is not above the trusted one.
        BadVersionError: the version skips N+1.
        BadSignatureError: not signed by the old or the new threshold.
    """
    current = state.root(repository).signed
    md = _load(new_root, Root, limits.max_root_bytes, f"{repository} root")
    version = md.signed.version
    if version <= current.version:
        raise RollbackError(f"{repository} root v{version} is not above v{current.version}")
    if version != current.version + 1:
        raise BadVersionError(f"{repository} root v{version} skips v{current.version + 1}")
    _verify(current, Root.type, md, f"{repository} root v{version} by the previous root")
    _verify(md.signed, Root.type, md, f"{repository} root v{version} by itself")
    _reset_rotated_floors(state, repository, current, md.signed)
    if repository == "image":
        state.image_root = md
    else:
        state.director_root = md
    return md.signed


def _reset_rotated_floors(
    state: TrustedState, repository: Repository, old: Root, new: Root
) -> None:
    def rotated(role: str) -> bool:
        return _role_keys(old, role) != _role_keys(new, role)

    if repository == "director":
        if rotated(Targets.type):
            state.director_targets_version = 0
        return
    if rotated(Timestamp.type) or rotated(Snapshot.type):
        state.timestamp_version = state.snapshot_version = 0
    if rotated(Targets.type):
        state.targets_version = 0


def update_root_chain(
    state: TrustedState,
    roots: Iterable[bytes],
    *,
    repository: Repository = "image",
    limits: Limits = DEFAULT_LIMITS,
) -> Root:
    """Apply consecutive root versions in order; return the final root.

    Raises:
        LengthExceededError: more than `limits.max_root_rotations` roots.
        Any error of `update_root`; roots applied before it stay applied.
    """
    final = state.root(repository).signed
    for count, data in enumerate(roots, start=1):
        if count > limits.max_root_rotations:
            raise LengthExceededError("too many root rotations in one update")
        final = update_root(state, data, repository=repository, limits=limits)
    return final


def _load_pinned(data: bytes, meta: MetaFile, role: type[_S], cap: int, what: str) -> Metadata[_S]:
    # Hashes are checked before parsing: nothing unpinned reaches the JSON parser.
    _check_size(data, cap, what)
    try:
        meta.verify_length_and_hashes(data)
    except LengthOrHashMismatchError as e:
        raise InconsistentMetadataError(f"{what} does not match its pinned hash: {e}") from None
    return _load(data, role, cap, what)


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
