"""Confidence drift: the population stability index (PSI) of a bundle's in-field
confidence histogram against the reference histogram recorded at compression time.

    PSI = sum over bins of (p_i - q_i) * ln(p_i / q_i)

with p the in-field share and q the reference share of each bin. Both histograms use the
agent's fixed confidence edges (0.05 .. 1.0 in steps of 0.05), so no re-binning happens.
A bin empty on one side would make the logarithm infinite: shares below PSI_EPSILON are
raised to it (the usual practice), which caps one empty bin's contribution at about
q * ln(q / 1e-4). Conventional reading: below 0.1 stable, 0.1-0.25 a moderate shift worth
a look, above 0.25 a major shift (inputs or the model's behaviour changed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tinyfleet_agent.protocol import CONFIDENCE_EDGES

PSI_EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
CLASSIFIER_TASKS = ("text-classification",)


def psi(
    reference: Sequence[int], observed: Sequence[int], epsilon: float = PSI_EPSILON
) -> float | None:
    """PSI of `observed` against `reference` (counts over the same bins); None if either
    histogram is empty.

    Raises:
        ValueError: the histograms have different numbers of bins.
    """
    if len(reference) != len(observed):
        raise ValueError("PSI needs two histograms over the same bins")
    ref_total, obs_total = sum(reference), sum(observed)
    if not ref_total or not obs_total:
        return None
    total = 0.0
    for ref, obs in zip(reference, observed, strict=True):
        q = max(ref / ref_total, epsilon)
        p = max(obs / obs_total, epsilon)
        total += (p - q) * math.log(p / q)
    return total


def psi_level(value: float | None) -> str:
    if value is None:
        return ""
    if value < PSI_MODERATE:
        return "stable"
    return "moderate shift" if value < PSI_MAJOR else "major shift"


@dataclass(frozen=True)
class DriftReference:
    """What PSI is measured against for one bundle."""

    applicable: bool
    counts: tuple[int, ...] | None = None
    note: str = ""

    def psi(self, observed: Sequence[int]) -> float | None:
        if self.counts is None or len(observed) != len(self.counts):
            return None
        return psi(self.counts, observed)


def reference_from_metrics(task: str, metrics: dict[str, Any]) -> DriftReference:
    """The reference histogram stored in a version's metrics, checked against the
    agent's edges (a reference over other bins would give a meaningless PSI)."""
    if task not in CLASSIFIER_TASKS:
        return DriftReference(False, note="not applicable: the model reports no confidence")
    recorded = metrics.get("reference_confidence") or {}
    edges, counts = recorded.get("edges"), recorded.get("counts")
    if (
        not isinstance(edges, list)
        or len(edges) != len(CONFIDENCE_EDGES)
        or not all(
            math.isclose(float(a), b, rel_tol=1e-9)
            for a, b in zip(edges, CONFIDENCE_EDGES, strict=True)
        )
    ):
        return DriftReference(True, note="no reference confidence recorded at compression")
    if not isinstance(counts, list) or len(counts) != len(CONFIDENCE_EDGES) + 1:
        return DriftReference(True, note="no reference confidence recorded at compression")
    return DriftReference(True, tuple(int(c) for c in counts))


def reference_for_bundle(bundle_id: str) -> DriftReference:
    from fleet.models import Bundle

    bundle = Bundle.objects.select_related("version__model").filter(pk=bundle_id).first()
    if bundle is None:
        return DriftReference(True, note="unknown bundle")
    return reference_from_metrics(bundle.version.model.task, bundle.version.metrics or {})
