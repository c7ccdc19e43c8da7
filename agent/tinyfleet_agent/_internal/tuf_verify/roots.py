"""Root rotation: each new root is signed by the old threshold and by its own."""

from __future__ import annotations

from collections.abc import Iterable

# python-tuf documents these names here but has no __all__ for them, which
# mypy --strict reads as "not re-exported".
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from ..errors import (
    BadVersionError,
    LengthExceededError,
    RollbackError,
)
from ..limits import DEFAULT_LIMITS, Limits
from .checks import _load, _role_keys, _verify
from .state import Repository, TrustedState


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
