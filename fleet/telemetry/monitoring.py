"""Fleet numbers for dashboards, `GET /api/v1/metrics` and Prometheus `/metrics`.

Per-bundle series read the hourly rollups (`BundleGroupHour`) and device charts the
daily ones (`DeviceDay`), so their cost grows with hours and groups, not with raw
batches. Rollups hold the devices' fixed-bucket histograms merged exactly, so the
percentiles are exact to the bucket whatever the number of devices.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from fleet.devices import push
from fleet.models import Bundle, BundleGroupHour, Device, DeviceDay, Group, Rollout, TelemetryBatch
from fleet.telemetry import drift
from fleet.telemetry.evidence import BundleEvidence


def device_counts() -> dict[str, int]:
    return dict(Counter(d.status for d in Device.objects.only("revoked_at", "last_seen_at")))


def version_shares() -> dict[str, int]:
    """How many devices run each bundle (as they last reported)."""
    return dict(
        Counter(
            (d.state or {}).get("active_bundle") or "none"
            for d in Device.objects.only("state")
            if d.revoked_at is None
        )
    )


def _hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _numbers(ev: BundleEvidence, reference: drift.DriftReference, seconds: float) -> dict[str, Any]:
    value = reference.psi(ev.confidence_counts) if ev.confidence_samples else None
    return {
        "requests": ev.requests,
        "throughput_rps": ev.requests / seconds,
        "p50_ms": ev.percentile(50),
        "p95_ms": ev.percentile(95),
        "p99_ms": ev.percentile(99),
        "error_rate": ev.error_rate,
        "golden_agreement": ev.golden_agreement,
        "feedback_accuracy": ev.accuracy,
        "feedback_samples": ev.feedback_total,
        "confidence_samples": ev.confidence_samples,
        "confidence_psi": value,
        "confidence_drift": drift.psi_level(value),
    }


def bundle_series(
    bundle_id: str,
    hours: int = 24,
    group: Group | None = None,
    reference: drift.DriftReference | None = None,
) -> list[dict[str, Any]]:
    """Hourly devices, requests, throughput, latency p50/p95/p99, error rate, golden
    agreement, feedback accuracy and confidence PSI for one bundle (fleet-wide, or one
    group's devices)."""
    reference = reference or drift.reference_for_bundle(bundle_id)
    since = _hour(timezone.now() - timedelta(hours=hours))
    rows = BundleGroupHour.objects.filter(bundle=bundle_id, hour__gte=since, group=group)
    per_hour: dict[datetime, tuple[BundleEvidence, int]] = {}
    for row in rows.order_by("hour", "shard"):
        ev, devices = per_hour.get(row.hour, (BundleEvidence(), 0))
        ev.add_row(row, str(row.pk))
        per_hour[row.hour] = (ev, devices + row.devices)  # shards never share a device
    return [
        {"hour": hour.isoformat(), "devices": devices, **_numbers(ev, reference, 3600)}
        for hour, (ev, devices) in sorted(per_hour.items())
    ]


def group_breakdown(
    bundle_id: str, hours: int = 24, reference: drift.DriftReference | None = None
) -> list[dict[str, Any]]:
    """Per group, the window merged: the same numbers as a series row, with the busiest
    hour's device count (distinct devices do not add across hours)."""
    reference = reference or drift.reference_for_bundle(bundle_id)
    since = _hour(timezone.now() - timedelta(hours=hours))
    rows = BundleGroupHour.objects.filter(
        bundle=bundle_id, hour__gte=since, group__isnull=False
    ).select_related("group")
    merged: dict[int, tuple[Group, BundleEvidence]] = {}
    devices_per_hour: dict[tuple[int, datetime], int] = defaultdict(int)
    for row in rows:
        if row.group is None or row.group_id is None:
            continue  # the query excludes them; this narrows the types
        group, ev = merged.get(row.group_id, (row.group, BundleEvidence()))
        ev.add_row(row, str(row.pk))
        merged[row.group_id] = (group, ev)
        devices_per_hour[(row.group_id, row.hour)] += row.devices
    peak: dict[int, int] = defaultdict(int)
    for (group_id, _), devices in devices_per_hour.items():
        peak[group_id] = max(peak[group_id], devices)
    return [
        {
            "group": g.pk,
            "name": g.name,
            "peak_devices": peak[g.pk],
            **_numbers(ev, reference, hours * 3600),
        }
        for g, ev in sorted(merged.values(), key=lambda item: item[0].name)
    ]


def device_series(device: Device, days: int = 14) -> list[dict[str, Any]]:
    """Daily numbers per bundle for one device (its detail page's charts)."""
    since = (timezone.now() - timedelta(days=days)).astimezone(UTC).date()
    out = []
    for row in DeviceDay.objects.filter(device=device, day__gte=since).order_by("day", "bundle"):
        ev = BundleEvidence()
        ev.add_row(row, "day")
        out.append(
            {
                "day": row.day.isoformat(),
                "bundle": row.bundle,
                "hours_reporting": bin(row.hours_mask).count("1"),
                **_numbers(ev, drift.DriftReference(False), 86400),
            }
        )
    return out


def drift_summary(bundle_id: str, hours: int = 24) -> dict[str, Any]:
    """PSI of the whole window's confidence histogram, with its reading."""
    reference = drift.reference_for_bundle(bundle_id)
    since = _hour(timezone.now() - timedelta(hours=hours))
    ev = BundleEvidence()
    for row in BundleGroupHour.objects.filter(bundle=bundle_id, hour__gte=since, group=None):
        ev.add_row(row, str(row.pk))
    value = reference.psi(ev.confidence_counts) if ev.confidence_samples else None
    return {
        "applicable": reference.applicable,
        "has_reference": reference.counts is not None,
        "note": reference.note,
        "confidence_samples": ev.confidence_samples,
        "psi": value,
        "level": drift.psi_level(value),
        "thresholds": {"moderate": drift.PSI_MODERATE, "major": drift.PSI_MAJOR},
        "epsilon": drift.PSI_EPSILON,
    }


def overview() -> dict[str, Any]:
    return {
        "devices": device_counts(),
        "versions": version_shares(),
        "rollouts_in_flight": Rollout.objects.filter(status__in=("running", "paused")).count(),
        "bundles": Bundle.objects.filter(status="published").count(),
        "alerts": alerts(),
    }


def alerts() -> list[str]:
    found = [f"rollout {r.pk} paused: {r.reason}" for r in Rollout.objects.filter(status="paused")]
    recent = timezone.now() - timedelta(days=1)
    found += [
        f"rollout {r.pk} rolled back: {r.reason}"
        for r in Rollout.objects.filter(status="rolled_back", finished_at__gte=recent)
    ]
    stale = sum(1 for d in Device.objects.all() if d.status == "stale")
    if stale:
        found.append(f"{stale} device(s) stale (no contact for over a day)")
    return found


def prometheus_text() -> str:
    """Server and fleet gauges in the Prometheus text exposition format."""
    from compression.models import Job

    lines = ["# HELP tinyfleet_devices Devices by status.", "# TYPE tinyfleet_devices gauge"]
    counts = device_counts()
    for status in ("online", "offline", "stale", "revoked"):
        lines.append(f'tinyfleet_devices{{status="{status}"}} {counts.get(status, 0)}')
    lines += [
        "# HELP tinyfleet_devices_by_bundle Devices by active bundle.",
        "# TYPE tinyfleet_devices_by_bundle gauge",
    ]
    for bundle, n in sorted(version_shares().items()):
        lines.append(f'tinyfleet_devices_by_bundle{{bundle="{bundle}"}} {n}')
    lines += ["# HELP tinyfleet_rollouts Rollouts by status.", "# TYPE tinyfleet_rollouts gauge"]
    for status, n in sorted(Counter(Rollout.objects.values_list("status", flat=True)).items()):
        lines.append(f'tinyfleet_rollouts{{status="{status}"}} {n}')
    lines += ["# HELP tinyfleet_jobs Compression jobs by status.", "# TYPE tinyfleet_jobs gauge"]
    for status, n in sorted(Counter(Job.objects.values_list("status", flat=True)).items()):
        lines.append(f'tinyfleet_jobs{{status="{status}"}} {n}')
    lines += [
        "# HELP tinyfleet_telemetry_batches_total Telemetry batches stored.",
        "# TYPE tinyfleet_telemetry_batches_total counter",
        f"tinyfleet_telemetry_batches_total {TelemetryBatch.objects.count()}",
    ]
    lines += push.prometheus_lines()
    return "\n".join(lines) + "\n"
