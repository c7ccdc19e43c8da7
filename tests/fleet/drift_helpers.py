"""A classifier bundle with a reference confidence histogram, and a shifted in-field one."""

from __future__ import annotations

from pathlib import Path

from tinyfleet_agent._internal.telemetry import CONFIDENCE_EDGES

from fleet.models import Bundle
from tests.fleet.publish_helpers import (
    make_version,
    onnx_files,
    publish_now,
)

BINS = len(CONFIDENCE_EDGES) + 1


# Reference: a confident classifier, most predictions above 0.9.
REFERENCE = [0] * BINS


def _classifier(tmp_path: Path, reference: list[int] | None = REFERENCE) -> Bundle:
    tmp_path.mkdir(parents=True, exist_ok=True)
    version = make_version(
        onnx_files(tmp_path),
        name=f"intent clf {tmp_path.name}",
        task="text-classification",
        pipeline={"labels": ["neg", "pos"], "confidence_threshold": 0.55, "max_seq_len": 96},
    )
    if reference is not None:
        edges = list(CONFIDENCE_EDGES)
        version.metrics["reference_confidence"] = {"edges": edges, "counts": reference}
        version.save(update_fields=["metrics"])
    return publish_now(version)


def _shifted() -> list[int]:
    # In the field the model is far less sure: most predictions between 0.55 and 0.75.
    counts = [0] * BINS
    counts[11], counts[12], counts[13], counts[19] = 200, 300, 200, 100
    return counts
