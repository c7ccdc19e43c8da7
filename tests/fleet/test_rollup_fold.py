"""Deferred rollups (TINYFLEET_TELEMETRY_FOLD=deferred): ingest stores raw batches only,
the fold adds them to the rollups exactly once (real PostgreSQL, the real device API,
a real Celery worker for the task)."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.models import BundleGroupHour, DeviceDay, Group, TelemetryBatch
from fleet.tasks import fold_telemetry
from fleet.telemetry.rollup_fold import fold_pending, pending_count
from fleet.telemetry.rollup_maintenance import enforce_retention, rebuild
from tests.conftest import ROOT, Worker, wait_for
from tests.fleet.publish_helpers import make_device
from tests.fleet.rollup_helpers import (
    _assert_row,
    _batch,
    _expected,
    _hour,
    _hourly,
    _post,
    _section,
)
from tests.services import rerun_on_private_postgres

pytestmark = pytest.mark.django_db


@pytest.fixture
def deferred(settings: Any) -> None:
    settings.TELEMETRY_FOLD = "deferred"


def _report(devices: list[Any], count: int, seed: int) -> tuple[list[Any], Any]:
    rng = random.Random(seed)
    hour = _hour(timezone.now()) - timedelta(hours=1)
    sections = []
    for i in range(count):
        section = _section(rng)
        sections.append(section)
        assert _post(devices[i % len(devices)], _batch(section, hour + timedelta(minutes=i))) == 202
    return sections, hour


def test_it_stores_raw_batches_and_folds_each_exactly_once(deferred: None) -> None:
    Group.objects.create(name="site-a", selector="site=a")
    devices = [make_device(f"pi-{i}") for i in range(3)]
    for d in devices:
        d.device.labels = {"site": "a"}
        d.device.save()
    sections, hour = _report(devices, 9, seed=3)
    assert pending_count() == 9 and not BundleGroupHour.objects.exists()
    assert not DeviceDay.objects.exists()
    # A replay while pending is still recognised by its batch id.
    again = _batch(sections[0], hour + timedelta(minutes=30))
    assert _post(devices[0], again) == 202
    assert _post(devices[0], again) == 200

    assert fold_pending() == {"folded": 10, "skipped": 0, "busy": 0}
    assert pending_count() == 0
    _assert_row(_hourly(group__isnull=True), _expected([*sections, sections[0]]))
    assert _hourly(group__name="site-a").devices == 3
    assert fold_pending()["folded"] == 0  # nothing counted twice


def test_it_folds_in_chunks_and_one_fold_at_a_time(deferred: None, monkeypatch: Any) -> None:
    import fleet.telemetry.rollup_fold as rollup_fold

    monkeypatch.setattr(rollup_fold, "FOLD_CHUNK", 4)
    devices = [make_device(f"pi-{i}") for i in range(2)]
    sections, _ = _report(devices, 10, seed=4)
    assert fold_pending(max_batches=6)["folded"] == 6 and pending_count() == 4
    assert fold_pending()["folded"] == 4
    _assert_row(_hourly(group__isnull=True), _expected(sections))


@pytest.mark.django_db(transaction=True)
def test_a_second_fold_waits_its_turn_instead_of_double_counting(
    deferred: None, request: pytest.FixtureRequest
) -> None:
    if connection.vendor != "postgresql":
        # The fold's lock is a PostgreSQL advisory lock: on the embedded SQLite default,
        # run this test again on a private PostgreSQL rather than skip or fail it.
        rerun = rerun_on_private_postgres(request.node.nodeid, ROOT)
        assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-2000:]
        assert "1 passed" in rerun.stdout, rerun.stdout[-2000:]
        return
    devices = [make_device(f"pi-{i}") for i in range(2)]
    sections, _ = _report(devices, 8, seed=5)
    results: list[dict[str, int]] = []
    start = threading.Barrier(3)

    def fold() -> None:
        start.wait()
        results.append(fold_pending())
        connection.close()

    threads = [threading.Thread(target=fold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["folded"] for r in results) == 8
    assert fold_pending()["folded"] == 0
    _assert_row(_hourly(group__isnull=True), _expected(sections))


def test_retention_keeps_batches_not_yet_folded(deferred: None, settings: Any) -> None:
    device = make_device()
    _report([device], 2, seed=6)
    old = timezone.now() - timedelta(days=settings.TELEMETRY_RAW_RETENTION_DAYS + 1)
    TelemetryBatch.objects.update(received_at=old)
    assert enforce_retention()["raw_batches"] == 0 and pending_count() == 2
    fold_pending()
    assert enforce_retention()["raw_batches"] == 2


def test_a_rebuild_counts_pending_batches_once(deferred: None) -> None:
    device = make_device()
    sections, hour = _report([device], 5, seed=7)
    rebuild(hour, hour + timedelta(hours=1))
    assert pending_count() == 0
    assert fold_pending()["folded"] == 0
    _assert_row(_hourly(group__isnull=True), _expected(sections))


@pytest.mark.django_db(transaction=True)
def test_the_fold_task_runs_on_a_real_worker(deferred: None, celery_worker: Worker) -> None:
    # The worker is its own process: it reads the mode from the environment, but the
    # fold does not depend on the mode, only on pending rows.
    devices = [make_device("pi-w")]
    sections, _ = _report(devices, 3, seed=8)
    fold_telemetry.delay()
    wait_for(lambda: pending_count() == 0, timeout=60)
    _assert_row(_hourly(group__isnull=True), _expected(sections))


def test_rows_shared_by_devices_in_different_groups_get_every_addition(
    deferred: None, monkeypatch: Any
) -> None:
    import fleet.telemetry.rollups as rollups

    monkeypatch.setattr(rollups, "HOURLY_SHARDS", 1)  # every device on the same rows
    Group.objects.create(name="site-a", selector="site=a")
    devices = [make_device(f"pi-{i}") for i in range(4)]
    for d in devices[:2]:
        d.device.labels = {"site": "a"}
        d.device.save()
    sections, _ = _report(devices, 8, seed=9)
    fold_pending()
    everyone = _hourly(group__isnull=True)
    _assert_row(everyone, _expected(sections))
    assert everyone.devices == 4
    site = _hourly(group__name="site-a")
    _assert_row(site, _expected([s for i, s in enumerate(sections) if i % 4 < 2]))
    assert site.devices == 2
