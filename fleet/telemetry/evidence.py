"""In-field evidence for rollout gates and dashboards, read from telemetry rollups.

Histograms share fixed bucket edges across devices (see the agent's telemetry), so
merging rollup rows is exact: counts add bucket by bucket, and a percentile from the
merged buckets is the one the raw batches would give. Gates read `DeviceDay` rows (the
wave's exact devices, whole UTC days), so their cost does not grow with raw batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tinyfleet_agent.protocol import LATENCY_EDGES_MS, percentile_from_buckets

from fleet.models import DeviceDay, DeviceEvent
from fleet.models.rollups import RollupCounters


def _add(a: list[int], b: list[int]) -> list[int]:
    if not a or not b:
        return list(a or b)
    return [x + y for x, y in zip(a, b, strict=True)]


@dataclass
class BundleEvidence:
    devices_reporting: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    latency_counts: list[int] = field(default_factory=list)
    latency_edges: list[float] = field(default_factory=lambda: list(LATENCY_EDGES_MS))
    confidence_counts: list[int] = field(default_factory=list)
    golden: dict[str, float] = field(default_factory=dict)  # device (or row) -> lowest
    feedback_total: int = 0
    feedback_correct: int = 0

    def add_row(self, row: RollupCounters, key: str) -> None:
        """Merge one rollup row; `key` names what its golden minimum belongs to."""
        self.requests += row.requests
        self.errors += row.errors
        self.latency_counts = _add(self.latency_counts, row.latency_counts)
        self.confidence_counts = _add(self.confidence_counts, row.confidence_counts)
        if row.golden_min_agreement is not None:
            self.golden[key] = min(row.golden_min_agreement, self.golden.get(key, 1.0))
        self.feedback_total += row.feedback_total
        self.feedback_correct += row.feedback_correct

    def merge(self, other: BundleEvidence) -> None:
        """Add evidence gathered over other devices (histograms bucket by bucket)."""
        self.devices_reporting |= other.devices_reporting
        self.requests += other.requests
        self.errors += other.errors
        self.latency_counts = _add(self.latency_counts, other.latency_counts)
        self.confidence_counts = _add(self.confidence_counts, other.confidence_counts)
        self.golden.update(other.golden)
        self.feedback_total += other.feedback_total
        self.feedback_correct += other.feedback_correct

    def percentile(self, q: float) -> float | None:
        if not self.latency_counts:
            return None
        return percentile_from_buckets(self.latency_edges, self.latency_counts, q)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total else None

    @property
    def golden_agreement(self) -> float | None:
        return min(self.golden.values()) if self.golden else None

    @property
    def confidence_samples(self) -> int:
        return sum(self.confidence_counts)


def collect(bundle_id: str, device_ids: Iterable[str], since: datetime) -> BundleEvidence:
    """Merge the daily rollups of `bundle_id` on these devices from `since`'s UTC day."""
    evidence = BundleEvidence()
    rows = DeviceDay.objects.filter(
        bundle=bundle_id,
        device_id__in=[str(d) for d in device_ids],
        day__gte=since.astimezone(UTC).date(),
    )
    for row in rows:
        device = str(row.device_id)
        evidence.devices_reporting.add(device)
        evidence.add_row(row, device)
    return evidence


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
