"""Telemetry in tests goes through the real ingest path (validation, raw + rollups)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from tinyfleet_agent._internal.telemetry import (
    CONFIDENCE_EDGES,
    INPUT_LENGTH_EDGES,
    LATENCY_EDGES_MS,
)

from fleet.api.device_api import _jsonable
from fleet.models import Device
from fleet.telemetry.rollups import store_batch
from fleet.telemetry.validation import parse_batch

BUCKETS = {
    "latency_ms": list(LATENCY_EDGES_MS),
    "input_tokens": list(INPUT_LENGTH_EDGES),
    "confidence": list(CONFIDENCE_EDGES),
}


def ingest(device: Device, body: dict[str, Any], received_at: datetime | None = None) -> bool:
    """Store one batch as the device API would; returns False for a replay."""
    body = {"batch_id": str(uuid.uuid4()), "buckets": BUCKETS, **body}
    batch = parse_batch(json.dumps(body).encode())
    return store_batch(device, batch, _jsonable(batch), received_at=received_at)
