"""The contract between the tinyfleet server and its agents, in one public module.

The server imports the agent only through this module: the bundle record schema and its
signed custom fields, the bundle cipher and key wrapping, the device-side verification
entry points (which the server's tests and `tinyfleet-verify` also use), the payload
layout, the telemetry histogram edges, the event states devices report, the fallback URL
rule and the device API's wire names. Everything else in `tinyfleet_agent._internal` may
change without notice.
"""

from __future__ import annotations

from ._internal.client import API as DEVICE_API_PREFIX
from ._internal.fallback import FallbackUrlError, check_fallback_url
from ._internal.payload import (
    GOLDEN_MEMBER,
    MODEL_MEMBERS,
    TOKENIZER_MEMBER,
    PayloadLimits,
    UnsafePayloadError,
    allowed_member,
    check_layout,
    extract_payload,
)
from ._internal.telemetry import (
    CONFIDENCE_EDGES,
    INPUT_LENGTH_EDGES,
    LATENCY_EDGES_MS,
    Histogram,
    percentile_from_buckets,
)
from ._internal.telemetry import SCHEMA as TELEMETRY_SCHEMA
from .bundle import (
    Assignment,
    BundleError,
    BundleRecord,
    CipherParams,
    InvalidRecordError,
    PipelineSpec,
    TrustedState,
    canonical_json,
    decrypt_bundle,
    director_target_custom,
    download_capped,
    encrypt_bundle,
    generate_content_key,
    image_target_custom,
    resolve_assignment,
    unwrap_key,
    verify_director_targets,
    verify_image_metadata,
    wrap_key,
)

# The states of the events a device reports (`POST /api/device/v1/events`), in the
# order an update moves through them, then the outcomes outside an update.
EVENT_STATES: frozenset[str] = frozenset(
    {
        "downloading",
        "verifying",
        "installing",
        "self-test",
        "active",
        "failed",
        "rolled-back",
        "refused",
        "frozen",
        "selftest-failed",  # a periodic in-field golden self-test of the active bundle failed
    }
)

__all__ = [
    "CONFIDENCE_EDGES",
    "DEVICE_API_PREFIX",
    "EVENT_STATES",
    "GOLDEN_MEMBER",
    "INPUT_LENGTH_EDGES",
    "LATENCY_EDGES_MS",
    "MODEL_MEMBERS",
    "TELEMETRY_SCHEMA",
    "TOKENIZER_MEMBER",
    "Assignment",
    "BundleError",
    "BundleRecord",
    "CipherParams",
    "FallbackUrlError",
    "Histogram",
    "InvalidRecordError",
    "PayloadLimits",
    "PipelineSpec",
    "TrustedState",
    "UnsafePayloadError",
    "allowed_member",
    "canonical_json",
    "check_fallback_url",
    "check_layout",
    "decrypt_bundle",
    "director_target_custom",
    "download_capped",
    "encrypt_bundle",
    "extract_payload",
    "generate_content_key",
    "image_target_custom",
    "percentile_from_buckets",
    "resolve_assignment",
    "unwrap_key",
    "verify_director_targets",
    "verify_image_metadata",
    "wrap_key",
]
