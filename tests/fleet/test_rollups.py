"""Telemetry rollups: exact at ingest (replays, concurrency), rebuildable, retained.

Everything runs on the configured database (PostgreSQL in CI: row locks and the
unique batch id are what keep rollups exact) through the real device API.
"""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from tinyfleet_agent._internal.telemetry import LATENCY_EDGES_MS, percentile_from_buckets

from fleet.models import BundleGroupHour, DeviceDay, Group, TelemetryBatch
from fleet.tasks import enforce_telemetry_retention, rebuild_telemetry_rollups
from fleet.telemetry.rollup_maintenance import enforce_retention
from fleet.telemetry.rollups import rollup_hour
from tests.conftest import Worker, wait_for
from tests.fleet.publish_helpers import TestDevice, make_device
from tests.fleet.rollup_helpers import (
    BUNDLE,
    LAT,
    _add,
    _assert_row,
    _batch,
    _expected,
    _hour,
    _hourly,
    _post,
    _section,
)
from tests.fleet.telemetry_helpers import BUCKETS, ingest

pytestmark = pytest.mark.django_db


def test_it_rolls_up_batches_per_group_hour_and_device_day_and_ignores_replays() -> None:
    rng = random.Random(6)
    hour = _hour(timezone.now()) - timedelta(hours=2)
    site = Group.objects.create(name="site-a", selector="site=a")
    canaries = Group.objects.create(name="canaries")
    devices = [make_device(f"pi-{i}") for i in range(3)]
    for d in devices[:2]:
        d.device.labels = {"site": "a"}
        d.device.save()
    devices[2].device.groups.add(canaries)
    sent: dict[int, list[dict[str, Any]]] = {0: [], 1: [], 2: []}
    for i, d in enumerate(devices):
        for minute in (10, 40):
            section = _section(rng)
            batch = _batch(section, hour + timedelta(minutes=minute))
            assert _post(d, batch) == 202
            sent[i].append(section)
    assert _post(devices[2], batch) == 200  # a replay: acknowledged, counted once
    everyone = sent[0] + sent[1] + sent[2]
    fleet = _hourly(group=None)
    assert fleet.hour == hour and fleet.devices == 3
    _assert_row(fleet, _expected(everyone))
    by_site = _hourly(group=site)
    assert by_site.devices == 2
    _assert_row(by_site, _expected(sent[0] + sent[1]))
    by_canaries = _hourly(group=canaries)
    assert by_canaries.devices == 1
    _assert_row(by_canaries, _expected(sent[2]))
    assert {r.group_id for r in BundleGroupHour.objects.all()} == {None, site.pk, canaries.pk}
    for i, d in enumerate(devices):
        day = DeviceDay.objects.get(device=d.device)
        assert day.day == hour.date() and day.hours_mask == 1 << hour.hour
        _assert_row(day, _expected(sent[i]))
    assert fleet.neg == sum(
        f["count"] for s in everyone for f in s["feedback"] if f["actual"] == "neg"
    )


def test_it_never_counts_a_replayed_batch_twice() -> None:
    rng = random.Random(1)
    device = make_device()
    batch = _batch(_section(rng), _hour(timezone.now()) - timedelta(minutes=30))
    assert _post(device, batch) == 202
    before = list(BundleGroupHour.objects.values())
    assert _post(device, batch) == 200
    assert list(BundleGroupHour.objects.values()) == before
    assert DeviceDay.objects.get().batches == 1


@pytest.mark.django_db(transaction=True)
def test_it_keeps_rollups_exact_when_batches_for_the_same_hour_race(monkeypatch: Any) -> None:
    # Eight threads, each with its own database connection, post different batches for
    # the same bundle, group and hour at once; two threads share each device, so the
    # device-day rows are contended too. One shard: every batch hits the same hourly rows.
    monkeypatch.setattr("fleet.telemetry.rollups.HOURLY_SHARDS", 1)
    rng = random.Random(2)
    group = Group.objects.create(name="racers", selector="site=race")
    devices = [make_device(f"racer-{i}") for i in range(4)]
    for d in devices:
        d.device.labels = {"site": "race"}
        d.device.save()
    hour = _hour(timezone.now()) - timedelta(hours=1)
    plans = [(devices[i % 4], [_section(rng) for _ in range(5)]) for i in range(8)]
    statuses: list[int] = []
    start = threading.Barrier(len(plans))

    def send(device: TestDevice, sections: list[dict[str, Any]]) -> None:
        try:
            start.wait()
            for minute, section in enumerate(sections):
                statuses.append(_post(device, _batch(section, hour + timedelta(minutes=minute))))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=plan) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202] * 40
    expected = _expected([s for _, sections in plans for s in sections])
    for where in ({"group": None}, {"group": group}):
        row = _hourly(**where)
        assert row.devices == 4
        _assert_row(row, expected)
    assert {r.group_id for r in BundleGroupHour.objects.all()} == {None, group.pk}
    assert sum(DeviceDay.objects.values_list("batches", flat=True)) == 40


def test_it_gives_the_same_percentiles_as_the_raw_batches() -> None:
    rng = random.Random(3)
    hour = _hour(timezone.now()) - timedelta(hours=3)
    for i in range(6):
        device = make_device(f"p-{i}")
        for _ in range(rng.randint(1, 4)):
            section = _section(rng)
            section["latency_ms"] = [
                rng.randint(0, 50) if rng.random() < 0.3 else 0 for _ in range(LAT)
            ]
            assert (
                _post(device, _batch(section, hour + timedelta(minutes=rng.randint(0, 59)))) == 202
            )
    raw_counts: list[int] = []
    for batch in TelemetryBatch.objects.all():
        for section in batch.body["bundles"]:
            raw_counts = _add(raw_counts, section["latency_ms"])
    from fleet.telemetry.monitoring import bundle_series

    (row,) = bundle_series(BUNDLE, hours=6)
    for q, key in ((50, "p50_ms"), (95, "p95_ms"), (99, "p99_ms")):
        assert row[key] == percentile_from_buckets(LATENCY_EDGES_MS, raw_counts, q)
    assert row["devices"] == 6 and row["requests"] > 0


@pytest.mark.parametrize(
    "change",
    [
        {"latency_ms": [1, 2, 3]},
        {"requests": -5},
        {"errors": {"internal": 1.5}},
        {"golden": {"min_agreement": 7}},
        {"bundle": ""},
        {"feedback": [{"predicted": "a", "actual": "b", "count": -1}]},
    ],
)
def test_it_refuses_bad_sections_and_stores_nothing(change: dict[str, Any]) -> None:
    device = make_device()
    batch = _batch(_section(random.Random(4)) | change, timezone.now())
    response = device.client().post(
        "/api/device/v1/telemetry", json.dumps(batch), content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["error"]
    assert not TelemetryBatch.objects.exists()
    assert not BundleGroupHour.objects.exists() and not DeviceDay.objects.exists()


def test_it_refuses_bucket_edges_other_than_the_agents() -> None:
    device = make_device()
    batch = _batch(_section(random.Random(5)), timezone.now())
    batch["buckets"] = {**BUCKETS, "latency_ms": [e * 2 for e in BUCKETS["latency_ms"]]}
    assert _post(device, batch) == 400
    assert not TelemetryBatch.objects.exists() and not BundleGroupHour.objects.exists()


def test_it_files_batches_from_skewed_clocks_under_the_time_received() -> None:
    now = timezone.now()
    assert rollup_hour(now - timedelta(hours=5), now) == _hour(now - timedelta(hours=5))
    assert rollup_hour(now + timedelta(days=300), now) == _hour(now)  # clock far ahead
    assert rollup_hour(now - timedelta(days=900), now) == _hour(now)  # clock far behind
    assert rollup_hour(None, now) == _hour(now)
    device = make_device()
    assert _post(device, _batch(_section(random.Random(6)), now + timedelta(days=365))) == 202
    assert BundleGroupHour.objects.get().hour in (_hour(now), _hour(timezone.now()))


def _raw_and_rollups_at(device: TestDevice, received_at: datetime) -> None:
    section = _section(random.Random(received_at.toordinal()))
    assert ingest(device.device, {"bundles": [section]}, received_at=received_at)


def test_retention_deletes_only_old_raw_batches_and_keeps_rollups(settings: Any) -> None:
    settings.TELEMETRY_RAW_RETENTION_DAYS = 14
    settings.TELEMETRY_ROLLUP_RETENTION_DAYS = 400
    now = timezone.now()
    device = make_device()
    for age in (0, 13, 20, 401):
        _raw_and_rollups_at(device, now - timedelta(days=age))
    deleted = enforce_retention(now)
    assert deleted == {"raw_batches": 2, "hourly_rollups": 1, "daily_rollups": 1}
    kept = sorted((now - b.received_at).days for b in TelemetryBatch.objects.all())
    assert kept == [0, 13]
    assert sorted((now.date() - d.day).days for d in DeviceDay.objects.all()) == [0, 13, 20]
    assert BundleGroupHour.objects.count() == 3  # one device: one shard per hour
    assert enforce_retention(now) == {"raw_batches": 0, "hourly_rollups": 0, "daily_rollups": 0}


@pytest.mark.django_db(transaction=True)
def test_the_retention_and_rebuild_tasks_run_on_a_real_worker(celery_worker: Worker) -> None:
    now = timezone.now()
    device = make_device()
    _raw_and_rollups_at(device, now - timedelta(days=30))
    _raw_and_rollups_at(device, now)
    enforce_telemetry_retention.delay()
    wait_for(lambda: TelemetryBatch.objects.count() == 1, timeout=60)
    assert DeviceDay.objects.count() == 2  # rollups outlive raw batches
    today = DeviceDay.objects.get(day=now.astimezone(UTC).date())
    requests = today.requests
    DeviceDay.objects.filter(pk=today.pk).update(requests=0)
    rebuild_telemetry_rollups.delay((now - timedelta(hours=1)).isoformat(), now.isoformat())
    wait_for(
        lambda: DeviceDay.objects.filter(day=today.day, requests=requests).exists(), timeout=60
    )
    assert requests > 0 and DeviceDay.objects.count() == 2


def _snapshot() -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for model in (BundleGroupHour, DeviceDay):
        for values in model.objects.values():
            values.pop("id")
            rows.append(
                tuple(
                    sorted(
                        (k, json.dumps(v, sort_keys=True, default=str)) for k, v in values.items()
                    )
                )
            )
    return sorted(rows)


def test_the_rebuild_command_reproduces_the_incremental_rollups() -> None:
    rng = random.Random(7)
    now = timezone.now()
    Group.objects.create(name="lab", selector="site=lab")
    devices = [make_device(f"r-{i}") for i in range(3)]
    devices[0].device.labels = {"site": "lab"}
    devices[0].device.save()
    for _ in range(25):
        device = rng.choice(devices)
        period_end = now - timedelta(minutes=rng.randint(0, 30 * 60))
        sections = [_section(rng, rng.choice((BUNDLE, "b-other")))]
        assert _post(device, _batch(sections[0], period_end)) == 202
    _post(devices[1], _batch(_section(rng), now + timedelta(days=40)))  # skewed clock
    incremental = _snapshot()
    assert len(incremental) > 5
    BundleGroupHour.objects.all().update(requests=0, latency_counts=[])  # damage them
    DeviceDay.objects.filter(device=devices[0].device).delete()
    call_command("rebuild_rollups", "--days", "3")
    assert _snapshot() == incremental


def test_the_rebuild_refuses_days_raw_retention_may_have_deleted(settings: Any) -> None:
    settings.TELEMETRY_RAW_RETENTION_DAYS = 14
    device = make_device()
    _raw_and_rollups_at(device, timezone.now() - timedelta(days=20))
    before = _snapshot()
    with pytest.raises(CommandError, match="RAW_RETENTION"):
        call_command("rebuild_rollups", "--days", "30")
    with pytest.raises(CommandError, match="not an ISO 8601"):
        call_command("rebuild_rollups", "--since", "last tuesday")
    assert _snapshot() == before


def test_the_device_page_and_api_show_its_daily_rollups(
    alice_api: Any, client: Any, bob: Any
) -> None:
    rng = random.Random(8)
    device = make_device("daily")
    now = timezone.now()
    sections = [_section(rng) for _ in range(3)]
    for minutes, section in zip((200, 100, 5), sections, strict=True):
        assert _post(device, _batch(section, now - timedelta(minutes=minutes))) == 202
    body = alice_api.get(f"/api/v1/metrics?device={device.id}&hours=48").json()
    expected = _expected(sections)
    requests = sum(d["requests"] for d in body["days"])
    assert requests == expected["requests"] and {d["bundle"] for d in body["days"]} == {BUNDLE}
    merged = [0] * LAT
    for day in DeviceDay.objects.filter(device=device.device):
        merged = _add(merged, day.latency_counts)
    assert merged == expected["latency"]
    assert alice_api.get("/api/v1/metrics?device=not-a-device").status_code == 404
    client.force_login(bob)  # a viewer
    page = client.get(f"/devices/{device.id}/").content.decode()
    assert 'data-testid="device-days"' in page and 'id="device-chart"' in page
    assert BUNDLE in page
