"""Telemetry in tests goes through the real ingest path (validation, raw + rollups)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.utils import timezone
from tinyfleet_agent._internal.telemetry import (
    CONFIDENCE_EDGES,
    INPUT_LENGTH_EDGES,
    LATENCY_EDGES_MS,
)

from fleet.api.device_api import _jsonable
from fleet.models import Device
from fleet.telemetry.rollup_fold import fold_pending
from fleet.telemetry.rollups import store_batch
from fleet.telemetry.validation import parse_batch

BUCKETS = {
    "latency_ms": list(LATENCY_EDGES_MS),
    "input_tokens": list(INPUT_LENGTH_EDGES),
    "confidence": list(CONFIDENCE_EDGES),
}


def ingest(device: Device, body: dict[str, Any], received_at: datetime | None = None) -> bool:
    """Store one batch as the device API would and, with deferred folding (the default),
    fold it as the beat task would, so the rollups hold it; returns False for a replay."""
    body = {"batch_id": str(uuid.uuid4()), "buckets": BUCKETS, **body}
    batch = parse_batch(json.dumps(body).encode())
    stored = store_batch(device, batch, _jsonable(batch), received_at=received_at)
    fold_pending()
    return stored


def grant(device: Device, *bundle_ids: str) -> None:
    """Record (ended) assignments of these bundle ids to `device`, so the device API
    accepts its reports on them. Only the rows the check reads are made: a bundle row
    and its version, never published or signed (tests that need a real bundle publish one)."""
    from compression.models import ModelVersion, RegisteredModel
    from fleet.models import Assignment, Bundle

    model, _ = RegisteredModel.objects.get_or_create(
        name="reported-on", defaults={"task": "text-embedding"}
    )
    for bundle_id in bundle_ids:
        bundle = Bundle.objects.filter(pk=bundle_id).first()
        if bundle is None:
            version = ModelVersion.objects.create(
                model=model,
                number=model.versions.count() + 1,
                format="onnx",
                storage_key="unused",
                original_filename="model.onnx",
                size_bytes=1,
                sha256=uuid.uuid4().hex * 2,
            )
            bundle = Bundle.objects.create(
                id=bundle_id,
                version=version,
                model="reported-on",
                release=Bundle.objects.filter(model="reported-on").count() + 1,
                target_name=bundle_id,
            )
        Assignment.objects.create(
            device=device, bundle=bundle, wrapped_key=b"", ended_at=timezone.now()
        )
