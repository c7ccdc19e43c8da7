"""Device health from telemetry batches: buckets from the range, the device page's charts
and empty state, and the fleet overview's table judged against the alert thresholds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from fleet.alerts import engine
from fleet.alerts.models import Rule, RuleKind
from fleet.telemetry import health
from tests.fleet.publish_helpers import make_device
from tests.fleet.telemetry_helpers import ingest

pytestmark = pytest.mark.django_db
MB = 2**20


def _batch(device: Any, at: datetime, **system: Any) -> None:
    dropped = system.pop("dropped", 0)
    ingest(
        device,
        {
            "period_start": (at - timedelta(seconds=60)).isoformat(),
            "period_end": at.isoformat(),
            "system": system,
            "dropped": dropped,
        },
        received_at=at,
    )


def _page(user: Any, url: str) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_it_chooses_the_bucket_from_the_range() -> None:
    assert health.bucket_for(timedelta(hours=1)) == "minute"
    assert health.bucket_for(timedelta(hours=3)) == "minute"
    assert health.bucket_for(timedelta(hours=24)) == "hour"
    assert health.bucket_for(timedelta(days=7)) == "day"
    assert health.parse_range("bogus") == ("24h", timedelta(hours=24))


def test_it_summarises_each_bucket_with_the_worst_and_the_mean() -> None:
    device = make_device("pi-1").device
    now = timezone.now().astimezone(UTC).replace(second=30, microsecond=0)
    minute = now - timedelta(minutes=5)
    _batch(device, minute, rss_bytes=100 * MB, cpu_seconds=6.0, disk_free_bytes=900 * MB)
    _batch(
        device,
        minute + timedelta(seconds=20),
        rss_bytes=140 * MB,
        cpu_seconds=18.0,
        disk_free_bytes=800 * MB,
        outbox_pending=3,
        dropped=2,
    )
    _batch(device, now - timedelta(minutes=1), rss_bytes=120 * MB, cpu_seconds=0.6)
    data = health.series(str(device.pk), timedelta(hours=1), now=now)
    assert data["bucket"] == "minute"
    first, second = data["points"]
    assert first["batches"] == 2 and first["rss_mb"] == 140.0  # the worst memory
    assert first["cpu_percent"] == 20.0  # mean of 10 % and 30 % of one core
    assert first["disk_free_mb"] == 800.0 and first["backlog"] == 3 and first["dropped"] == 2
    assert first["temp_c"] is None  # never measured: not zero
    assert second["rss_mb"] == 120.0 and second["cpu_percent"] == 1.0


def test_it_shows_health_charts_and_a_table_on_the_device_page(bob: Any) -> None:
    device = make_device("pi-2").device
    _batch(device, timezone.now() - timedelta(minutes=2), rss_bytes=64 * MB, cpu_seconds=3.0)
    html = _page(bob, f"/devices/{device.pk}/?range=1h")
    assert 'data-testid="device-health"' in html and "one point per minute" in html
    assert 'data-metric="rss_mb"' in html and 'data-metric="cpu_percent"' in html
    assert "not measured on this device" in html  # no temperature sensor reported
    assert "64.0" in html
    assert "js/health.js" in html and "<script>" not in html  # no inline scripts (CSP)


def test_it_says_when_the_first_telemetry_is_expected(bob: Any) -> None:
    device = make_device("pi-new").device
    device.last_seen_at = timezone.now()
    device.save()
    html = _page(bob, f"/devices/{device.pk}/")
    assert "Waiting for the first telemetry (next expected at" in html
    expected = health.next_expected([str(device.pk)])
    assert expected is not None
    assert timedelta(seconds=290) < expected - device.last_seen_at <= timedelta(seconds=300)


def test_it_expects_the_next_batch_after_the_observed_interval() -> None:
    device = make_device("pi-3").device
    now = timezone.now()
    _batch(device, now - timedelta(seconds=15))
    _batch(device, now - timedelta(seconds=5))
    expected = health.next_expected([str(device.pk)], now=now)
    assert expected is not None and abs((expected - now).total_seconds() - 5) < 1


def test_it_flags_devices_over_the_alert_thresholds_on_the_overview(bob: Any) -> None:
    engine.ensure_rules()
    Rule.objects.filter(kind=RuleKind.MEMORY_ABOVE).update(threshold=100)
    heavy, fine = make_device("pi-heavy").device, make_device("pi-fine").device
    make_device("pi-silent")
    _batch(heavy, timezone.now() - timedelta(minutes=1), rss_bytes=300 * MB, dropped=5)
    _batch(fine, timezone.now() - timedelta(minutes=1), rss_bytes=30 * MB, cpu_temp_c=45.5)
    html = _page(bob, "/fleet/")
    table = html[html.index('data-testid="fleet-health"') :]
    assert table.index("pi-heavy") < table.index("pi-fine") < table.index("pi-silent")
    assert "check: Agent memory above (MB) 100, dropping telemetry" in table
    assert ">ok<" in table and "45.5" in table
    assert "no telemetry in the last 30 minutes" in table
