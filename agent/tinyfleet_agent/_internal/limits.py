"""Size caps applied before anything untrusted is parsed or buffered.

Every number bounds memory or work the device spends on bytes it has not yet
verified, so an attacker in the network path cannot exhaust a small device.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB


@dataclass(frozen=True)
class Limits:
    """Caps for metadata, records, chunks and payloads (bytes unless noted)."""

    max_root_bytes: int = 512 * _KIB
    max_timestamp_bytes: int = 16 * _KIB
    max_snapshot_bytes: int = 2 * _MIB
    # The image targets list every published bundle with its record.
    max_targets_bytes: int = 8 * _MIB
    max_director_targets_bytes: int = 64 * _KIB
    max_state_bytes: int = 2 * _MIB
    # Upper bound of root rotations accepted in one update run.
    max_root_rotations: int = 64
    max_record_bytes: int = 64 * _KIB
    max_provenance_bytes: int = 32 * _KIB
    # Two chunk buffers are held while decrypting: this bounds device memory.
    max_chunk_size: int = 8 * _MIB
    max_payload_bytes: int = 8 * _GIB
    # Read size used when streaming a download to disk.
    download_block_size: int = 1 * _MIB


DEFAULT_LIMITS = Limits()
