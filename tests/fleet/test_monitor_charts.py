"""The in-field page's buckets (minute from raw batches, hour and day from the rollups),
its per-group drill-down and its "waiting for the first telemetry" state."""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from fleet.models import Group
from fleet.security import director
from fleet.telemetry import monitor_charts
from tests.fleet.publish_helpers import make_device, make_version, onnx_files, publish_now
from tests.fleet.telemetry_helpers import ingest

pytestmark = pytest.mark.django_db


def _section(bundle: str, requests: int, bucket: int = 12, feedback: int = 0) -> dict[str, Any]:
    latency = [0] * 43
    latency[bucket] = requests
    items = [{"predicted": "a", "actual": "a", "count": feedback}] if feedback else []
    return {"bundle": bundle, "requests": requests, "latency_ms": latency, "feedback": items}


@pytest.fixture
def two_groups(tmp_path: Path) -> tuple[str, Group, Group, Any, Any]:
    bundle = publish_now(make_version(onnx_files(tmp_path))).pk
    north = Group.objects.create(name="north", selector="site=north")
    south = Group.objects.create(name="south", selector="site=south")
    n, s = make_device("n-1").device, make_device("s-1").device
    n.labels, s.labels = {"site": "north"}, {"site": "south"}
    n.save()
    s.save()
    return bundle, north, south, n, s


def test_it_draws_minute_buckets_from_raw_batches_for_short_ranges(
    two_groups: tuple[str, Group, Group, Any, Any],
) -> None:
    bundle, north, _, n, s = two_groups
    now = timezone.now().astimezone(UTC).replace(second=30, microsecond=0)
    ingest(n, {"bundles": [_section(bundle, 10)]}, received_at=now - timedelta(minutes=3))
    ingest(s, {"bundles": [_section(bundle, 30)]}, received_at=now - timedelta(minutes=3))
    ingest(
        n, {"bundles": [_section(bundle, 5, feedback=4)]}, received_at=now - timedelta(minutes=1)
    )
    chart = monitor_charts.chart(bundle, timedelta(hours=1), now=now)
    assert chart["bucket"] == "minute"
    first, second = chart["rows"]
    assert (first["requests"], first["devices"]) == (40, 2)
    assert first["throughput_rps"] == pytest.approx(40 / 60)
    assert (second["requests"], second["feedback_accuracy"]) == (5, 1.0)
    only_north = monitor_charts.chart(bundle, timedelta(hours=1), north, now=now)
    assert [r["requests"] for r in only_north["rows"]] == [10, 5]


def test_it_uses_hours_and_days_from_the_rollups_for_longer_ranges(
    two_groups: tuple[str, Group, Group, Any, Any],
) -> None:
    bundle, _, south, n, s = two_groups
    now = timezone.now()
    for days_ago in (0, 0, 2):
        ingest(n, {"bundles": [_section(bundle, 7)]}, received_at=now - timedelta(days=days_ago))
    ingest(s, {"bundles": [_section(bundle, 1)]}, received_at=now)
    assert monitor_charts.chart(bundle, timedelta(hours=24))["bucket"] == "hour"
    week = monitor_charts.chart(bundle, timedelta(days=7))
    assert week["bucket"] == "day"
    assert [r["requests"] for r in week["rows"]] == [7, 15]
    assert week["rows"][-1]["devices"] == 2  # the busiest hour's distinct devices
    south_week = monitor_charts.chart(bundle, timedelta(days=7), south)
    assert [r["requests"] for r in south_week["rows"]] == [1]


def test_it_falls_back_to_hours_when_a_range_has_too_many_batches(
    two_groups: tuple[str, Group, Group, Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, _, _, n, _ = two_groups
    monkeypatch.setattr(monitor_charts, "MINUTE_BATCH_LIMIT", 1)
    for _ in range(2):
        ingest(n, {"bundles": [_section(bundle, 3)]})
    chart = monitor_charts.chart(bundle, timedelta(hours=1))
    assert chart["bucket"] == "hour" and "per hour from the rollups" in chart["note"]
    assert chart["rows"][0]["requests"] == 6


def test_it_drills_down_into_a_group_and_sorts_and_localises_on_the_page(
    two_groups: tuple[str, Group, Group, Any, Any], bob: Any
) -> None:
    bundle, north, _, n, s = two_groups
    ingest(n, {"bundles": [_section(bundle, 10)]})
    ingest(s, {"bundles": [_section(bundle, 30)]})
    client = Client()
    client.force_login(bob)
    html = client.get(f"/bundles/{bundle}/monitor/?range=1h").content.decode()
    assert "one point per minute" in html and "every device" in html
    assert f'href="?range=1h&amp;group={north.pk}"' in html
    assert 'data-sortable data-testid="monitor-table"' in html
    assert "<time datetime=" in html
    drilled = client.get(f"/bundles/{bundle}/monitor/?range=1h&group={north.pk}").content.decode()
    assert "group north" in drilled and "devices of group north only" in drilled
    assert "all groups" in drilled
    assert client.get(f"/bundles/{bundle}/monitor/?group=999").status_code == 404


def test_it_says_when_the_first_telemetry_is_expected_or_what_to_do(
    two_groups: tuple[str, Group, Group, Any, Any], bob: Any
) -> None:
    bundle, _, _, n, _ = two_groups
    client = Client()
    client.force_login(bob)
    html = client.get(f"/bundles/{bundle}/monitor/").content.decode()
    assert "No device runs this bundle" in html and "roll it out to a group" in html
    from fleet.models import Bundle

    director.assign(n, Bundle.objects.get(pk=bundle))
    n.last_seen_at = timezone.now()
    n.save()
    html = client.get(f"/bundles/{bundle}/monitor/").content.decode()
    assert "1 device runs this bundle" in html
    assert "Waiting for the first telemetry (next expected at" in html
