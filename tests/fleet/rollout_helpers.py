"""Rollout test helpers: a published bundle, device reports and telemetry, assignments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.models import Bundle, DeviceEvent
from fleet.security import director
from tests.fleet.publish_helpers import (
    TestDevice,
    make_version,
    onnx_files,
    publish_now,
)
from tests.fleet.telemetry_helpers import ingest

LATENCY_EDGES = [0.1 * 10 ** (i / 7) for i in range(42)]


def _bundle(tmp_path: Path, name: str = "minilm intent") -> Bundle:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return publish_now(make_version(onnx_files(tmp_path), name=name))


def _report(device: TestDevice, bundle: Bundle, state: str = "active", reason: str = "") -> None:
    DeviceEvent.objects.create(device=device.device, bundle=bundle.pk, state=state, reason=reason)


def _telemetry(
    device: TestDevice,
    bundle: Bundle,
    *,
    golden: float = 1.0,
    latency_bucket: int = 10,
    requests: int = 20,
    errors: int = 0,
    feedback: list[dict[str, Any]] | None = None,
) -> None:
    counts = [0] * (len(LATENCY_EDGES) + 1)
    counts[latency_bucket] = requests
    ingest(
        device.device,
        {
            "bundle": bundle.pk,
            "bundles": [
                {
                    "bundle": bundle.pk,
                    "requests": requests,
                    "errors": {"runtime": errors} if errors else {},
                    "latency_ms": counts,
                    "golden": {"agreement": golden},
                    "feedback": feedback or [],
                }
            ],
        },
    )


def _assigned(device: TestDevice) -> str | None:
    current = director.current_assignment(device.device)
    return current.bundle_id if current else None
