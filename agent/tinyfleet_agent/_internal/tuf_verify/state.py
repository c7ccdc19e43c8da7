"""What a device trusts between updates: both roots and the version floors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

# python-tuf documents these names here but has no __all__ for them, which
# mypy --strict reads as "not re-exported".
from tuf.api.metadata import (  # type: ignore[attr-defined, unused-ignore]
    Metadata,
    Root,
)

from ..errors import (
    MalformedMetadataError,
    RollbackError,
)
from ..limits import DEFAULT_LIMITS, Limits
from ..record import (
    canonical_json,
)
from .checks import _check_size, _load_trusted_root

_STATE_SCHEMA = 1
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
