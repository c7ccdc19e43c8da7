"""Telemetry storage and ingest cost with rollups, on PostgreSQL.

    python bench/rollup_storage.py [--devices 400] [--batches 6] [--groups 2]

Creates a fresh database (`tinyfleet_rollup_bench`, dropped at the end), migrates it,
creates devices with the ORM (labels matching `--groups` selector groups), and ingests
the agent's real batch bodies (`Telemetry.snapshot_and_reset()` after recording requests
with latencies, token counts, confidences, feedback and a golden self-test) through
`fleet.telemetry.rollups.store_batch`, in this process (no HTTP: the HTTP path is bench/fleet.py's).
Batches of one device go to one hour, one batch every 5 minutes as the agent's default.

Prints (and writes bench/reports/rollup_storage.md): median and p95 wall time of one raw-only
insert (what ingest did before rollups) and of one raw + rollup ingest, and the bytes per
row (heap + indexes + TOAST) of the raw table and both rollup tables.
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
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB = "tinyfleet_rollup_bench"


def _setup() -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB}"
    os.environ.setdefault("TINYFLEET_DATA_DIR", tempfile.mkdtemp(prefix="tf-rollup-bench-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tinyfleet.settings"
    sys.path[:0] = [str(ROOT), str(ROOT / "agent")]
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _agent_batch(rng: random.Random, bundle: str, period_end: datetime) -> dict[str, object]:
    from tinyfleet_agent._internal.telemetry import Telemetry

    telemetry = Telemetry(agent_version="bench")
    telemetry.set_bundle(bundle, load_ms=120.0)
    for _ in range(rng.randint(20, 200)):
        telemetry.record_request(
            bundle,
            rng.lognormvariate(1.5, 0.4),
            input_lengths=[rng.randint(4, 60)],
            confidences=[min(1.0, rng.betavariate(8, 1.5))],
        )
        if rng.random() < 0.1:
            telemetry.record_feedback(bundle, rng.choice("ab"), rng.choice("ab"))
    telemetry.record_golden(bundle, True, 1.0)
    body = telemetry.snapshot_and_reset()
    body["period_end"] = period_end.isoformat()
    body["period_start"] = (period_end - timedelta(minutes=5)).isoformat()
    return body


def _table_bytes(table: str) -> tuple[int, float]:
    """(total relation size after VACUUM, mean live tuple size). Rollup rows are updated
    in place many times, so their relation size holds dead versions a steady-state
    autovacuum would reuse; the tuple size is what a row costs once settled."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE " + table)
        cursor.execute("SELECT pg_total_relation_size(%s)", [table])
        total = int(cursor.fetchone()[0])
        quoted = connection.ops.quote_name(table)
        cursor.execute(f"SELECT coalesce(avg(pg_column_size(t.*)), 0) FROM {quoted} t")  # noqa: S608
        return total, float(cursor.fetchone()[0])


def _ms(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


def _concurrent_rate(fleet: list[object], hour: datetime, threads: int, mode: str) -> float:
    """Batches per second with `threads` ingesting at once (own connections), all for
    the same bundle and hour: the case where hourly rows are contended."""
    import json
    import threading

    from django.db import connection, transaction

    from fleet.api.device_api import _jsonable
    from fleet.models import TelemetryBatch
    from fleet.telemetry.rollups import store_batch
    from fleet.telemetry.validation import parse_batch

    rng = random.Random(threads)
    per_thread = max(1, len(fleet) // threads)
    work = [
        [
            (d, parse_batch(json.dumps(_agent_batch(rng, "b-bench", hour)).encode()))
            for d in fleet[t * per_thread : (t + 1) * per_thread]
        ]
        for t in range(threads)
    ]
    barrier = threading.Barrier(threads + 1)

    def ingest(items: list[tuple[object, dict[str, object]]]) -> None:
        barrier.wait()
        for device, batch in items:
            if mode == "rollups":
                store_batch(device, batch, _jsonable(batch))  # type: ignore[arg-type]
            else:
                with transaction.atomic():
                    TelemetryBatch.objects.create(
                        batch_id=batch["batch_id"], device=device, body=_jsonable(batch)
                    )
        connection.close()

    pool = [threading.Thread(target=ingest, args=(items,)) for items in work]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return sum(len(items) for items in work) / (time.perf_counter() - start)


def run(devices: int, batches: int, groups: int, threads: int = 4) -> str:
    import json

    from django.db import connection

    from fleet.api.device_api import _jsonable
    from fleet.models import BundleGroupHour, Device, DeviceDay, Group, TelemetryBatch
    from fleet.telemetry.rollups import store_batch
    from fleet.telemetry.validation import parse_batch

    rng = random.Random(6)
    for g in range(groups):
        Group.objects.create(name=f"site-{g}", selector=f"site=s{g}")
    fleet = [
        Device.objects.create(
            name=f"dev-{i}",
            identity_public_key=uuid.uuid4().hex * 2,
            encryption_public_key=uuid.uuid4().hex * 2,
            credential_digest=uuid.uuid4().hex * 2,
            labels={"site": f"s{i % groups}"},
        )
        for i in range(devices)
    ]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    raw_only: list[float] = []
    with_rollups: list[float] = []
    for b in range(batches):
        for device in fleet:
            body = _agent_batch(rng, "b-bench", hour + timedelta(minutes=5 * (b + 1)))
            batch = parse_batch(json.dumps(body).encode())
            start = time.perf_counter()
            store_batch(device, batch, _jsonable(batch))
            with_rollups.append(time.perf_counter() - start)
            # The pre-rollup ingest, for comparison: one raw insert in a transaction.
            batch["batch_id"] = uuid.uuid4()
            start = time.perf_counter()
            from django.db import transaction

            with transaction.atomic():
                TelemetryBatch.objects.create(
                    batch_id=batch["batch_id"], device=device, body=_jsonable(batch)
                )
            raw_only.append(time.perf_counter() - start)
    concurrent = {mode: _concurrent_rate(fleet, hour, threads, mode) for mode in ("raw", "rollups")}
    raw_rows = TelemetryBatch.objects.count()
    sizes = {
        "fleet_telemetrybatch": (_table_bytes("fleet_telemetrybatch"), raw_rows),
        "fleet_bundlegrouphour": (
            _table_bytes("fleet_bundlegrouphour"),
            BundleGroupHour.objects.count(),
        ),
        "fleet_deviceday": (_table_bytes("fleet_deviceday"), DeviceDay.objects.count()),
    }
    connection.close()
    raw_med, raw_p95 = _ms(raw_only)
    roll_med, roll_p95 = _ms(with_rollups)
    lines = [
        "# Telemetry rollups: ingest cost and storage",
        "",
        f"`python bench/rollup_storage.py --devices {devices} --batches {batches} "
        f"--groups {groups}` on {platform.machine()}, {os.cpu_count()} cores (shared, busy), "
        f"Python {platform.python_version()}, PostgreSQL on 127.0.0.1, "
        f"{datetime.now(UTC):%Y-%m-%d}.",
        "In-process `store_batch` (no HTTP), the agent's real batch bodies, one bundle, "
        f"each device in one of {groups} selector groups, {batches} batches per device "
        "in one hour. The table: one batch at a time.",
        "",
        "| ingest of one batch | median ms | p95 ms |",
        "|---|---|---|",
        f"| raw insert only (before rollups) | {raw_med:.2f} | {raw_p95:.2f} |",
        f"| raw insert + device-day + {groups + 1} bundle-hour rows (locked, updated) "
        f"| {roll_med:.2f} | {roll_p95:.2f} |",
        "",
        f"With {threads} threads ingesting at once (own connections, one bundle, one hour): "
        f"raw only {concurrent['raw']:.0f} batches/s, raw + rollups "
        f"{concurrent['rollups']:.0f} batches/s (Python threads share one GIL: this bounds "
        "the contention cost, it is not the server's HTTP rate).",
        "",
        "| table | rows | relation bytes/row (indexes, TOAST, dead versions) | mean row bytes |",
        "|---|---|---|---|",
    ]
    for table, ((size, tuple_bytes), rows) in sizes.items():
        lines.append(f"| `{table}` | {rows} | {size / max(rows, 1):,.0f} | {tuple_bytes:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--groups", type=int, default=2)
    args = parser.parse_args()
    _setup()
    try:
        report = run(args.devices, args.batches, args.groups)
    finally:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB])
    print(report)
    (ROOT / "bench" / "reports" / "rollup_storage.md").write_text(report)


if __name__ == "__main__":
    main()
