"""Rollup test helpers: random telemetry sections, posting batches, expected sums."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from tinyfleet_agent._internal.telemetry import LATENCY_EDGES_MS

from fleet.models import BundleGroupHour
from tests.fleet.publish_helpers import TestDevice
from tests.fleet.telemetry_helpers import BUCKETS

BUNDLE = "b-rollup-test"


LAT, TOK, CONF = len(LATENCY_EDGES_MS) + 1, len(BUCKETS["input_tokens"]) + 1, 21


def _add(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)] if a else list(b)


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _section(rng: random.Random, bundle: str = BUNDLE) -> dict[str, Any]:
    latency = [rng.choice((0, 0, 1, 3, 17)) for _ in range(LAT)]
    return {
        "bundle": bundle,
        "requests": sum(latency),
        "inferences": sum(latency),
        "errors": {"bad-request": rng.randint(0, 3), "internal": rng.randint(0, 1)},
        "latency_ms": latency,
        "input_tokens": [rng.randint(0, 5) for _ in range(TOK)],
        "confidence": [rng.randint(0, 9) for _ in range(CONF)],
        "low_confidence": rng.randint(0, 4),
        "golden": {"runs": 2, "failed": 0, "min_agreement": rng.uniform(0.9, 1.0)},
        "feedback": [
            {"predicted": "pos", "actual": "pos", "count": rng.randint(0, 6)},
            {"predicted": "pos", "actual": "neg", "count": rng.randint(0, 2)},
        ],
    }


def _batch(section: dict[str, Any], period_end: datetime) -> dict[str, Any]:
    return {
        "batch_id": str(uuid.uuid4()),
        "period_start": (period_end - timedelta(minutes=1)).isoformat(),
        "period_end": period_end.isoformat(),
        "buckets": BUCKETS,
        "bundles": [section],
    }


def _post(device: TestDevice, batch: dict[str, Any]) -> int:
    response = device.client().post(
        "/api/device/v1/telemetry", json.dumps(batch), content_type="application/json"
    )
    return int(response.status_code)


def _expected(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals, computed independently of the server code."""
    out: dict[str, Any] = {"requests": 0, "errors": 0, "latency": [], "confidence": []}
    out |= {"feedback_total": 0, "feedback_correct": 0, "golden_min": 1.0, "batches": 0}
    for s in sections:
        out["batches"] += 1
        out["requests"] += s["requests"]
        out["errors"] += sum(s["errors"].values())
        out["latency"] = _add(out["latency"], s["latency_ms"])
        out["confidence"] = _add(out["confidence"], s["confidence"])
        out["golden_min"] = min(out["golden_min"], s["golden"]["min_agreement"])
        for f in s["feedback"]:
            out["feedback_total"] += f["count"]
            out["feedback_correct"] += f["count"] if f["predicted"] == f["actual"] else 0
    return out


def _assert_row(row: Any, expected: dict[str, Any]) -> None:
    assert row.batches == expected["batches"]
    assert row.requests == expected["requests"]
    assert row.errors == expected["errors"]
    assert row.latency_counts == expected["latency"]
    assert row.confidence_counts == expected["confidence"]
    assert row.feedback_total == expected["feedback_total"]
    assert row.feedback_correct == expected["feedback_correct"]
    assert row.golden_min_agreement == pytest.approx(expected["golden_min"])


def _hourly(**where: Any) -> Any:
    """The shards of one bundle-group-hour added up, independently of the server code."""
    rows = list(BundleGroupHour.objects.filter(bundle=BUNDLE, **where))
    assert rows and len({(r.group_id, r.hour) for r in rows}) == 1
    merged = SimpleNamespace(hour=rows[0].hour, feedback_confusion={})
    for name in ("batches", "requests", "errors", "devices", "feedback_total"):
        setattr(merged, name, sum(getattr(r, name) for r in rows))
    merged.feedback_correct = sum(r.feedback_correct for r in rows)
    merged.latency_counts = [sum(c) for c in zip(*(r.latency_counts for r in rows), strict=True)]
    merged.confidence_counts = [
        sum(c) for c in zip(*(r.confidence_counts for r in rows), strict=True)
    ]
    merged.golden_min_agreement = min(r.golden_min_agreement for r in rows)
    merged.neg = sum(r.feedback_confusion.get("pos", {}).get("neg", 0) for r in rows)
    return merged
