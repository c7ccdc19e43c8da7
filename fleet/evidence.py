"""In-field evidence for rollout gates, from device events and telemetry batches.

Histograms share fixed bucket edges across devices (see the agent's telemetry), so
merging is exact: counts add bucket by bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleet.models import DeviceEvent, TelemetryBatch


@dataclass
class BundleEvidence:
    devices_reporting: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    latency_counts: list[int] = field(default_factory=list)
    latency_edges: list[float] = field(default_factory=list)
    golden: dict[str, float] = field(default_factory=dict)  # device -> agreement
    feedback_total: int = 0
    feedback_correct: int = 0

    def add_latency(self, edges: list[float], counts: list[int]) -> None:
        if not self.latency_counts:
            self.latency_edges, self.latency_counts = list(edges), [0] * len(counts)
        if len(counts) == len(self.latency_counts):
            self.latency_counts = [a + b for a, b in zip(self.latency_counts, counts, strict=True)]

    def percentile(self, q: float) -> float | None:
        total = sum(self.latency_counts)
        if not total:
            return None
        rank, seen = q / 100 * total, 0
        for index, count in enumerate(self.latency_counts):
            if count and seen + count >= rank:
                if index >= len(self.latency_edges):
                    return float(self.latency_edges[-1])
                lower = 0.0 if index == 0 else self.latency_edges[index - 1]
                upper = self.latency_edges[index]
                return lower + (upper - lower) * max(rank - seen, 0.0) / count
            seen += count
        return float(self.latency_edges[-1])

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None

    @property
    def golden_agreement(self) -> float | None:
        return min(self.golden.values()) if self.golden else None


def collect(bundle_id: str, device_ids: Iterable[str], since: datetime) -> BundleEvidence:
    """Merge every batch section about `bundle_id` from these devices since `since`."""
    evidence = BundleEvidence()
    ids = [str(d) for d in device_ids]
    batches = TelemetryBatch.objects.filter(device_id__in=ids, received_at__gte=since)
    for batch in batches.order_by("received_at"):
        body: dict[str, Any] = batch.body
        edges = (body.get("buckets") or {}).get("latency_ms") or []
        for section in body.get("bundles") or []:
            if section.get("bundle") == bundle_id:
                _add_section(evidence, str(batch.device_id), edges, section)
    return evidence


def _add_section(ev: BundleEvidence, device: str, edges: list[float], s: dict[str, Any]) -> None:
    ev.devices_reporting.add(device)
    ev.requests += int(s.get("requests") or 0)
    ev.errors += sum(int(v) for v in (s.get("errors") or {}).values())
    if edges and s.get("latency_ms"):
        ev.add_latency(edges, [int(c) for c in s["latency_ms"]])
    golden = s.get("golden") or {}
    # The agent reports min/last agreement of its periodic golden self-tests.
    agreement = golden.get("min_agreement", golden.get("agreement"))
    if agreement is not None:
        ev.golden[device] = min(float(agreement), ev.golden.get(device, 1.0))
    for item in s.get("feedback") or []:
        count = int(item.get("count") or 0)
        ev.feedback_total += count
        if item.get("predicted") == item.get("actual"):
            ev.feedback_correct += count


def install_outcomes(bundle_id: str, device_ids: Iterable[str], since: datetime) -> dict[str, str]:
    """device -> "installed" | "failed", from each device's latest event on the bundle."""
    outcome: dict[str, str] = {}
    events = DeviceEvent.objects.filter(
        bundle=bundle_id,
        device_id__in=[str(d) for d in device_ids],
        received_at__gte=since,
        state__in=("active", "failed", "refused"),
    ).order_by("received_at", "id")
    for event in events:
        outcome[str(event.device_id)] = "installed" if event.state == "active" else "failed"
    return outcome


def accuracy_drop_is_significant(
    new_correct: int,
    new_total: int,
    old_correct: int,
    old_total: int,
    margin_points: float,
    *,
    alpha: float = 0.05,
) -> tuple[bool, float]:
    """One-sided two-proportion z-test of H0: acc_new >= acc_old - margin.

    Returns (reject H0, p-value): True means we are confident the new bundle is worse
    than the old one by more than the margin. Wilson-free normal approximation; callers
    enforce a minimum sample size first.
    """
    p_new, p_old = new_correct / new_total, old_correct / old_total
    diff = p_new - (p_old - margin_points / 100.0)
    var = p_new * (1 - p_new) / new_total + p_old * (1 - p_old) / old_total
    if var == 0:
        return diff < 0, 0.0 if diff < 0 else 1.0
    z = diff / math.sqrt(var)
    p_value = 0.5 * (1 + math.erf(z / math.sqrt(2)))  # P(Z <= z)
    return p_value < alpha, p_value
