"""What the in-field page, device health and the alert rules cost to read, on PostgreSQL.

    python bench/monitor_pages.py [--devices 100] [--batches 50]

Creates a fresh database (`tinyfleet_monitor_bench`, dropped at the end), migrates it,
and ingests the agent's real batch bodies (`Telemetry.snapshot_and_reset()` after
recorded requests, confidences, feedback and a golden self-test, plus the `system`
gauges) through `fleet.rollups.store_batch`: `--batches` per device, spread over the
last 50 minutes. Then times, side by side in one run (median of 5, CPU time of this
process and wall time):

- `monitor_charts.chart(bundle, 1h)`: minute buckets folded from the raw batches;
- `monitor_charts.chart(bundle, 24h)`: hour buckets from the hourly rollups;
- `health.series(device, 1h)`: one device's health page;
- `health.latest(30 min)` over every device: the fleet overview's health table and
  each health alert rule;
- `alerts.engine.evaluate()`: every alert rule once.

Writes bench/reports/monitor_pages.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DB = "tinyfleet_monitor_bench"


def _setup() -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB}"
    os.environ.setdefault("TINYFLEET_DATA_DIR", tempfile.mkdtemp(prefix="tf-monitor-bench-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tinyfleet.settings"
    sys.path[:0] = [str(ROOT), str(ROOT / "agent")]
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _batch(rng: random.Random, bundle: str) -> dict[str, Any]:
    from tinyfleet_agent._internal.telemetry import Telemetry

    telemetry = Telemetry(agent_version="bench")
    telemetry.set_bundle(bundle, load_ms=120.0)
    for _ in range(rng.randint(5, 40)):
        telemetry.record_request(
            bundle, rng.lognormvariate(1.5, 0.4), [rng.randint(4, 60)], [rng.random()]
        )
        if rng.random() < 0.5:
            telemetry.record_feedback(bundle, rng.choice("abc"), rng.choice("abc"))
    telemetry.record_golden(bundle, True, 1.0)
    body = telemetry.snapshot_and_reset()
    body["system"].update(disk_free_bytes=rng.randint(1, 9) * 2**30, outbox_pending=0)
    return body


def _timed(fn: Callable[[], Any], runs: int = 5) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(runs):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def run(devices: int, batches: int) -> str:
    import json

    from django.utils import timezone

    from fleet.alerts import engine
    from fleet.api.device_api import _jsonable
    from fleet.models import Device, Group
    from fleet.telemetry import health, monitor_charts
    from fleet.telemetry.rollups import store_batch
    from fleet.telemetry.validation import parse_batch

    rng = random.Random(1)
    bundle = "b-bench"
    Group.objects.create(name="bench", selector="site=bench")
    fleet = [
        Device.objects.create(
            name=f"d{i}",
            labels={"site": "bench"},
            identity_public_key=f"{i:064x}",
            encryption_public_key="0" * 64,
            credential_digest=f"{i:064x}",
            last_seen_at=timezone.now(),
        )
        for i in range(devices)
    ]
    now = timezone.now()
    started = time.perf_counter()
    for n in range(batches):
        at = now - timedelta(seconds=3000 * (batches - n) / batches)
        for device in fleet:
            parsed = parse_batch(json.dumps(_batch(rng, bundle)).encode())
            store_batch(device, parsed, _jsonable(parsed), received_at=at)
    ingest_s = time.perf_counter() - started
    total = devices * batches
    rows = [
        ("chart 1h: minute buckets from raw batches", _timed(
            lambda: monitor_charts.chart(bundle, timedelta(hours=1)))),
        ("chart 24h: hour buckets from rollups", _timed(
            lambda: monitor_charts.chart(bundle, timedelta(hours=24)))),
        ("device health, 1h (one device)", _timed(
            lambda: health.series(str(fleet[0].pk), timedelta(hours=1)))),
        ("health.latest, 30 min, every device", _timed(
            lambda: health.latest(now - timedelta(minutes=30)))),
        ("alert rules, one evaluation", _timed(engine.evaluate)),
    ]  # fmt: skip
    lines = [
        "# Monitor pages, device health and alert rules: read cost",
        "",
        f"`python bench/monitor_pages.py --devices {devices} --batches {batches}` on "
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other engineers' work: "
        f"busy), Python {platform.python_version()}, PostgreSQL on 127.0.0.1. "
        f"{total} raw batches ({devices} devices x {batches}) over the last 50 minutes, "
        f"ingested through `store_batch` in {ingest_s:.0f} s. Medians of 5 runs; CPU time is "
        "this process's (the database's own work shows in wall time only).",
        "",
        "| read | CPU ms | wall ms | per 1,000 raw batches (wall) |",
        "|---|---:|---:|---:|",
    ]
    for name, (cpu, wall) in rows:
        per = f"{wall / total * 1000:.0f} ms" if "raw" in name or "every" in name else "—"
        lines.append(f"| {name} | {cpu:.0f} | {wall:.0f} | {per} |")
    minute_wall = rows[0][1][1]
    lines += [
        "",
        "Reading: the minute chart folds every raw batch of the range in Python, so its cost "
        f"grows with batches (about {minute_wall / total * 1000:.0f} ms per 1,000 here); "
        f"`MINUTE_BATCH_LIMIT` ({monitor_charts.MINUTE_BATCH_LIMIT:,}) caps it at about "
        f"{minute_wall / total * monitor_charts.MINUTE_BATCH_LIMIT / 1000:.1f} s before the "
        "page falls back to hour buckets from the rollups, whose cost does not depend on the "
        "number of batches. Health reads pick JSON keys in the database and stay small.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()
    _setup()
    try:
        report = run(args.devices, args.batches)
    finally:
        from django.db import connections

        connections.close_all()
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB])
    print(report)
    (ROOT / "bench" / "reports" / "monitor_pages.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
