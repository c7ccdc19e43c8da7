"""Validation of telemetry batches from devices.

Batches carry only aggregates (counters, fixed-bucket histograms, gauges); strings are
short identifiers. Anything else is refused whole, so nothing partial is stored.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Any

MAX_DEPTH = 5
MAX_STRING = 200
MAX_ITEMS = 2000


class TelemetryError(ValueError):
    """A batch that is not valid telemetry; the message says what is wrong."""


def _check_value(value: Any, path: str, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise TelemetryError(f"batch has more than {MAX_ITEMS} values")
    if depth > MAX_DEPTH:
        raise TelemetryError(f"{path}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise TelemetryError(f"{path}: numbers must be finite")
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise TelemetryError(f"{path}: strings are limited to {MAX_STRING} characters")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{path}[{i}]", depth + 1, budget)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if len(key) > 100:
                raise TelemetryError(f"{path}: key too long")
            _check_value(item, f"{path}.{key}", depth + 1, budget)
        return
    raise TelemetryError(f"{path}: unsupported value")


def _time(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise TelemetryError(f"{name} must be an ISO 8601 time") from exc


def parse_batch(raw: bytes) -> dict[str, Any]:
    """Parse and validate one batch; returns it with `period_start`/`period_end` parsed.

    Raises:
        TelemetryError: not JSON, wrong shape, or values outside the limits.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TelemetryError("telemetry must be a JSON object") from exc
    if not isinstance(body, dict):
        raise TelemetryError("telemetry must be a JSON object")
    try:
        batch_id = uuid.UUID(str(body.get("batch_id")))
    except ValueError as exc:
        raise TelemetryError("batch_id must be a UUID") from exc
    bundle = body.get("bundle")
    if bundle is not None and (not isinstance(bundle, str) or len(bundle) > 64):
        raise TelemetryError("bundle must be a short string")
    _check_value(body, "batch", 0, [MAX_ITEMS])
    raw_period = body.get("period")
    period = raw_period if isinstance(raw_period, dict) else {}
    start = _time(period.get("start", body.get("period_start")), "period.start")
    end = _time(period.get("end", body.get("period_end")), "period.end")
    if start and end and end < start:
        raise TelemetryError("period ends before it starts")
    return {**body, "batch_id": batch_id, "period_start": start, "period_end": end}
