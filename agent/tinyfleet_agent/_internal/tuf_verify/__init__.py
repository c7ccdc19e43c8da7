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

from .roots import update_root, update_root_chain
from .state import TrustedState
from .targets import (
    Assignment,
    DirectorTargets,
    ImageMetadata,
    match_assignment,
    resolve_assignment,
    verify_director_targets,
    verify_image_metadata,
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
