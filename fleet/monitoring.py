"""Fleet numbers for dashboards, `GET /api/v1/metrics` and Prometheus `/metrics`.

Per-bundle series are merged from the devices' fixed-bucket histograms per hour, so the
percentiles are exact to the bucket whatever the number of devices.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from fleet import push
from fleet.evidence import BundleEvidence, _add_section
from fleet.models import Bundle, Device, Rollout, TelemetryBatch


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
    return ts.replace(minute=0, second=0, microsecond=0)


def bundle_series(bundle_id: str, hours: int = 24, group: Any = None) -> list[dict[str, Any]]:
    """Hourly requests, latency p50/p95/p99, error rate, golden agreement, feedback
    accuracy for one bundle (optionally one group's devices)."""
    since = timezone.now() - timedelta(hours=hours)
    batches = TelemetryBatch.objects.filter(received_at__gte=since)
    if group is not None:
        batches = batches.filter(device_id__in=[d.pk for d in group.members()])
    per_hour: dict[datetime, BundleEvidence] = defaultdict(BundleEvidence)
    for batch in batches.order_by("received_at"):
        edges = (batch.body.get("buckets") or {}).get("latency_ms") or []
        for section in batch.body.get("bundles") or []:
            if section.get("bundle") == bundle_id:
                stamp = batch.period_end or batch.received_at
                _add_section(per_hour[_hour(stamp)], str(batch.device_id), edges, section)
    return [
        {
            "hour": hour.isoformat(),
            "devices": len(ev.devices_reporting),
            "requests": ev.requests,
            "p50_ms": ev.percentile(50),
            "p95_ms": ev.percentile(95),
            "p99_ms": ev.percentile(99),
            "error_rate": ev.error_rate,
            "golden_agreement": ev.golden_agreement,
            "feedback_accuracy": ev.accuracy,
            "feedback_samples": ev.feedback_total,
        }
        for hour, ev in sorted(per_hour.items())
    ]


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
