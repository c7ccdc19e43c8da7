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
from tests.conftest import Worker, wait_for
from tests.fleet.rollup_helpers import (
    _assert_row,
    _batch,
    _expected,
    _hour,
    _hourly,
    _post,
    _section,
    make_device,
)

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
@pytest.mark.services("postgres")  # the fold's lock is a PostgreSQL advisory lock
def test_a_second_fold_waits_its_turn_instead_of_double_counting(deferred: None) -> None:
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


@pytest.mark.services("postgres")  # partitioned folds
def test_it_partitions_pending_batches_like_the_hourly_shards(deferred: None) -> None:
    # The SQL partition of a batch must be the shard its device's hourly rows live in,
    # or two partitions would write the same rows.
    import fleet.telemetry.rollup_fold as rollup_fold
    from fleet.telemetry.rollups import shard_of

    devices = [make_device(f"pi-{i}") for i in range(24)]
    _report(devices, 24, seed=10)
    count = rollup_fold.partition_count()
    assert count == 8
    seen = {}
    for partition in range(count):
        for batch_id in rollup_fold._partition_ids(100, partition, count):
            seen[batch_id] = partition
    batches = TelemetryBatch.objects.select_related("device")
    assert {b.pk: shard_of(b.device) for b in batches} == seen


@pytest.mark.django_db(transaction=True)
@pytest.mark.services("postgres")  # advisory locks
def test_folds_of_different_partitions_do_not_wait_for_each_other(deferred: None) -> None:
    import fleet.telemetry.rollup_fold as rollup_fold
    from fleet.telemetry.rollups import shard_of

    devices = [make_device(f"pi-{i}") for i in range(16)]
    sections, _ = _report(devices, 32, seed=11)
    held = shard_of(devices[0].device)
    holding, release, folded = threading.Event(), threading.Event(), threading.Event()

    def hold_one_partition() -> None:
        # Another folder in the middle of partition `held`.
        from django.db import transaction

        with transaction.atomic():
            assert rollup_fold.take_fold_lock(wait=False, partition=held)
            holding.set()
            release.wait(30)
        connection.close()

    holder = threading.Thread(target=hold_one_partition)
    holder.start()
    assert holding.wait(10)
    try:
        # Does not block on the held partition: folds every other one and reports it busy.
        result = fold_pending()
        folded.set()
    finally:
        release.set()
        holder.join()
    in_held = sum(1 for i in range(32) if shard_of(devices[i % 16].device) == held)
    assert result == {"folded": 32 - in_held, "skipped": 0, "busy": 1}
    assert pending_count() == in_held
    assert fold_pending()["folded"] == in_held
    _assert_row(
        _hourly(group__isnull=True, shard=held),
        _expected([s for i, s in enumerate(sections) if shard_of(devices[i % 16].device) == held]),
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.services("postgres")  # advisory locks
def test_many_concurrent_folders_count_every_batch_once(deferred: None) -> None:
    import fleet.telemetry.rollup_fold as rollup_fold

    rollup_fold.FOLD_CHUNK, chunk = 3, rollup_fold.FOLD_CHUNK  # many small transactions
    try:
        Group.objects.create(name="site-a", selector="site=a")
        devices = [make_device(f"pi-{i}") for i in range(12)]
        for d in devices[::2]:
            d.device.labels = {"site": "a"}
            d.device.save()
        sections, _ = _report(devices, 60, seed=12)
        results: list[dict[str, int]] = []
        start = threading.Barrier(4)

        def fold() -> None:
            start.wait()
            results.append(fold_pending())
            connection.close()

        threads = [threading.Thread(target=fold) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        rollup_fold.FOLD_CHUNK = chunk
    assert sum(r["folded"] for r in results) + fold_pending()["folded"] == 60
    _assert_row(_hourly(group__isnull=True), _expected(sections))
    site = _hourly(group__name="site-a")
    _assert_row(site, _expected([s for i, s in enumerate(sections) if (i % 12) % 2 == 0]))
