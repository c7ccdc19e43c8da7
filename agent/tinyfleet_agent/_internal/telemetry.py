"""Aggregated, privacy-safe telemetry: counters and fixed-bucket histograms.

Nothing here ever sees a raw input or output: the local API hands over
latencies, token counts, confidences and feedback label pairs. Histograms use
fixed bucket edges shared with the server, so batches from any number of
devices and periods merge exactly by adding integer counts, and percentiles
are estimated from the merged buckets (`percentile_from_buckets`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import sysinfo

UTC = timezone.utc  # datetime.UTC needs Python 3.11; devices may run 3.10

__all__ = [
    "CONFIDENCE_EDGES",
    "INPUT_LENGTH_EDGES",
    "LATENCY_EDGES_MS",
    "SCHEMA",
    "Histogram",
    "Telemetry",
    "percentile_from_buckets",
]

SCHEMA = 1


def _log_edges(start: float, per_decade: int, count: int) -> tuple[float, ...]:
    # Rounded to 6 significant digits so the server can hard-code the same list.
    return tuple(float(f"{start * 10 ** (i / per_decade):.6g}") for i in range(count))


# 0.1 ms .. ~72 s, 7 buckets per decade (each ~39% wider than the last).
LATENCY_EDGES_MS = _log_edges(0.1, 7, 42)
# Token counts 1 .. 65536 in powers of two.
INPUT_LENGTH_EDGES = tuple(float(2**i) for i in range(17))
# Confidence 0.05 .. 1.0 in steps of 0.05.
CONFIDENCE_EDGES = tuple(round(0.05 * i, 2) for i in range(1, 21))


class Histogram:
    """Counts per bucket: bucket i holds edges[i-1] < x <= edges[i]; the last
    bucket (index len(edges)) holds everything above the last edge."""

    def __init__(self, edges: Sequence[float], counts: Sequence[int] | None = None) -> None:
        self.edges = tuple(edges)
        self.counts = list(counts) if counts is not None else [0] * (len(self.edges) + 1)
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError("a histogram needs len(edges) + 1 counts")

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[_bucket(self.edges, value)] += n

    def merge(self, other: Histogram) -> Histogram:
        """Add `other`'s counts into this histogram (edges must be identical)."""
        if other.edges != self.edges:
            raise ValueError("cannot merge histograms with different edges")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        return self

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, q: float) -> float | None:
        return percentile_from_buckets(self.edges, self.counts, q)


def _bucket(edges: Sequence[float], value: float) -> int:
    # Binary search: first edge >= value.
    low, high = 0, len(edges)
    while low < high:
        mid = (low + high) // 2
        if edges[mid] < value:
            low = mid + 1
        else:
            high = mid
    return low


def percentile_from_buckets(
    edges: Sequence[float], counts: Sequence[int], q: float
) -> float | None:
    """Estimate the q-th percentile (0-100) from bucket counts.

    Interpolates linearly inside the bucket holding the rank; the first
    bucket starts at 0 and the overflow bucket reports the last edge (a lower
    bound). Returns None for an empty histogram.
    """
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    total = sum(counts)
    if total == 0:
        return None
    rank = q / 100.0 * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(edges):
                return float(edges[-1])
            lower = 0.0 if index == 0 else float(edges[index - 1])
            upper = float(edges[index])
            return lower + (upper - lower) * max(rank - seen, 0.0) / count
        seen += count
    return float(edges[-1])


@dataclass
class _BundleStats:
    requests: int = 0
    inferences: int = 0
    low_confidence: int = 0
    # Low-confidence inputs sent to the group's fallback endpoint (see fallback.py).
    fallback: Counter[str] = field(default_factory=Counter)
    load_ms: float | None = None
    errors: Counter[str] = field(default_factory=Counter)
    feedback: Counter[tuple[str, str]] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_EDGES_MS))
    input_tokens: Histogram = field(default_factory=lambda: Histogram(INPUT_LENGTH_EDGES))
    confidence: Histogram = field(default_factory=lambda: Histogram(CONFIDENCE_EDGES))
    golden: dict[str, Any] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.requests or self.errors or self.feedback or self.golden or self.fallback)

    def to_dict(self, bundle: str) -> dict[str, Any]:
        return {
            "bundle": bundle,
            "requests": self.requests,
            "inferences": self.inferences,
            "errors": dict(self.errors),
            "latency_ms": self.latency.counts,
            "input_tokens": self.input_tokens.counts,
            "confidence": self.confidence.counts,
            "low_confidence": self.low_confidence,
            "forwarded": self.fallback["forwarded"],
            "forward_failed": self.fallback["forward_failed"],
            "forward_dropped": self.fallback["forward_dropped"],
            "feedback": [
                {"predicted": p, "actual": a, "count": n}
                for (p, a), n in sorted(self.feedback.items())
            ],
            "golden": dict(self.golden),
            "load_ms": self.load_ms,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Telemetry:
    """Thread-safe collector, reset each time a batch is taken."""

    def __init__(self, *, agent_version: str = "", clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._agent_version = agent_version
        self._bundles: dict[str, _BundleStats] = {}
        self._errors: Counter[str] = Counter()
        self._active: str | None = None
        self._start_readings()

    def _start_readings(self) -> None:
        self._period_start = self._clock()
        self._cpu_start = sysinfo.cpu_seconds()
        self._energy_start = sysinfo.rapl_energy_uj()

    def _stats(self, bundle: str) -> _BundleStats:
        return self._bundles.setdefault(bundle, _BundleStats())

    def set_bundle(self, bundle: str, load_ms: float | None = None) -> None:
        """Make `bundle` the active one (new per-bundle counters, load time)."""
        with self._lock:
            self._active = bundle
            self._stats(bundle).load_ms = load_ms

    def record_request(
        self,
        bundle: str,
        latency_ms: float,
        input_lengths: Iterable[int] = (),
        confidences: Iterable[float] = (),
        low_confidence: int = 0,
    ) -> None:
        with self._lock:
            stats = self._stats(bundle)
            stats.requests += 1
            stats.latency.observe(latency_ms)
            for n in input_lengths:
                stats.inferences += 1
                stats.input_tokens.observe(n)
            for c in confidences:
                stats.confidence.observe(c)
            stats.low_confidence += low_confidence

    def record_error(self, bundle: str | None, kind: str) -> None:
        """Count an error by kind (e.g. "bad-request", "no-model", "internal")."""
        with self._lock:
            if bundle is None:
                self._errors[kind] += 1
            else:
                self._stats(bundle).errors[kind] += 1

    def record_fallback(self, bundle: str, outcome: str, n: int = 1) -> None:
        """Count `n` low-confidence inputs "forwarded", "forward_failed" or "forward_dropped"."""
        with self._lock:
            self._stats(bundle).fallback[outcome] += n

    def record_feedback(self, bundle: str, predicted: str, actual: str) -> None:
        with self._lock:
            self._stats(bundle).feedback[(predicted, actual)] += 1

    def record_golden(self, bundle: str, passed: bool, agreement: float) -> None:
        """Count one periodic golden-set self-test of `bundle`."""
        with self._lock:
            golden = self._stats(bundle).golden
            golden["runs"] = golden.get("runs", 0) + 1
            golden["failed"] = golden.get("failed", 0) + (0 if passed else 1)
            golden["last_agreement"] = agreement
            golden["min_agreement"] = min(golden.get("min_agreement", 1.0), agreement)

    def snapshot_and_reset(self) -> dict[str, Any]:
        """Return the JSON-able batch for the period so far and start a new one."""
        with self._lock:
            now = self._clock()
            bundles, errors = self._bundles, self._errors
            inferences = sum(s.inferences for s in bundles.values())
            body = {
                "schema": SCHEMA,
                "batch_id": str(uuid.uuid4()),
                "period_start": _iso(self._period_start),
                "period_end": _iso(now),
                "agent_version": self._agent_version,
                "active_bundle": self._active,
                "buckets": {
                    "latency_ms": list(LATENCY_EDGES_MS),
                    "input_tokens": list(INPUT_LENGTH_EDGES),
                    "confidence": list(CONFIDENCE_EDGES),
                },
                "bundles": [s.to_dict(b) for b, s in bundles.items() if not s.empty()],
                "errors": dict(errors),
                "system": self._system(inferences),
                "dropped": 0,
            }
            self._bundles = {}
            if self._active is not None:
                # Load time describes the active bundle, not the period: keep it.
                self._stats(self._active).load_ms = bundles.get(
                    self._active, _BundleStats()
                ).load_ms
            self._errors = Counter()
            self._start_readings()
            return body

    def _system(self, inferences: int) -> dict[str, Any]:
        cpu = sysinfo.cpu_seconds() - self._cpu_start
        energy_uj = _energy_delta(self._energy_start, sysinfo.rapl_energy_uj())
        per_inference = None
        if energy_uj is not None and inferences:
            per_inference = energy_uj / inferences / 1000.0
        return {
            "rss_bytes": sysinfo.rss_bytes(),
            "peak_rss_bytes": sysinfo.peak_rss_bytes(),
            "cpu_seconds": round(cpu, 6),
            "cpu_temp_c": sysinfo.cpu_temperature_c(),
            "cpu_freq_mhz": sysinfo.cpu_frequency_mhz(),
            "energy_uj": energy_uj,
            "energy_per_inference_mj": per_inference,
        }


def _energy_delta(start: tuple[int, int] | None, end: tuple[int, int] | None) -> int | None:
    if start is None or end is None:
        return None
    delta = end[0] - start[0]
    # The RAPL counter wraps at max_energy_range_uj.
    return delta if delta >= 0 else delta + end[1]
