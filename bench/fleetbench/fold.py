"""Deferred folding: one folding process against several, on equal backlogs.

The fold is partitioned by device shard with one advisory lock per partition
(fleet/rollup_fold.py), so N processes should fold about N times as fast while cores
and PostgreSQL keep up. Each run starts from the same backlog: copies of the batches
the telemetry phase stored (same devices, so the same partitions and rollup rows),
marked pending with fresh batch ids. The folders are separate Python processes (as
Celery worker processes would be), started together once each is connected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import ROOT
from .common import DB_NAME
from .server import _machine_cpu, _stat_cpu

# A folding process: connect, say "ready", wait for the go file, fold everything,
# print the result, wait for the quit file (so its PostgreSQL backend is still there
# to be measured). argv: go file, quit file.
_FOLDER = r"""
import json, os, sys, time
from pathlib import Path
import django
django.setup()
from django.db import connection
from fleet.telemetry.rollup_fold import fold_pending
go, quit_ = Path(sys.argv[1]), Path(sys.argv[2])
connection.ensure_connection()
with connection.cursor() as c:
    c.execute("select pg_backend_pid()")
    backend = c.fetchone()[0]
print(json.dumps({"ready": True, "backend": backend}), flush=True)
while not go.exists():
    time.sleep(0.005)
t0, c0 = time.time(), time.process_time()
done = fold_pending(max_batches=10**9)
t1, c1 = time.time(), time.process_time()
print(json.dumps({"t0": t0, "t1": t1, "cpu": c1 - c0, **done}), flush=True)
while not quit_.exists():
    time.sleep(0.01)
"""


def make_backlog(n: int) -> int:
    """Copy up to `n` stored batches as pending ones with fresh ids; returns how many."""
    from django.db import connection

    from fleet.models import TelemetryBatch

    table = TelemetryBatch._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (batch_id, device_id, bundle, period_start, period_end, "  # noqa: S608
            "body, received_at, folded) SELECT gen_random_uuid(), device_id, bundle, "
            f"period_start, period_end, body, received_at, false FROM {table} "
            "WHERE folded ORDER BY id LIMIT %s",
            [n],
        )
        return int(cursor.rowcount)


def run_folders(procs: int, env: dict[str, str]) -> dict[str, Any]:
    """Start `procs` folding processes at once on the current backlog; measure them."""
    from fleet.telemetry.rollup_fold import pending_count

    backlog = pending_count()
    work = Path(tempfile.mkdtemp(prefix="tinyfleet-fold-"))
    go, quit_ = work / "go", work / "quit"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _FOLDER, str(go), str(quit_)],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'agent'}"},
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    try:
        backends = []
        for child in children:
            assert child.stdout is not None
            backends.append(json.loads(child.stdout.readline())["backend"])
        pg0 = {b: _stat_cpu(b) or 0.0 for b in backends}
        busy0, t0 = _machine_cpu()[0], time.time()
        go.touch()
        results = []
        for child in children:
            assert child.stdout is not None
            results.append(json.loads(child.stdout.readline()))
        pg1 = {b: _stat_cpu(b) or 0.0 for b in backends}
        busy = (_machine_cpu()[0] - busy0) / os.sysconf("SC_CLK_TCK") / (time.time() - t0)
        quit_.touch()
    finally:
        quit_.touch()
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
    folded = sum(r["folded"] for r in results)
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    python_cpu = sum(r["cpu"] for r in results)
    pg_cpu = sum(pg1[b] - pg0[b] for b in backends)
    return {
        "procs": procs,
        "backlog": backlog,
        "folded": folded,
        "left": pending_count(),
        "seconds": round(wall, 2),
        "rate": round(folded / wall, 1) if wall else 0.0,
        "python_ms_per_batch": round(1000 * python_cpu / max(folded, 1), 2),
        "pg_ms_per_batch": round(1000 * pg_cpu / max(folded, 1), 2),
        "per_proc": [r["folded"] for r in results],
        "machine_busy_cores": round(busy, 2),
    }


def fold_scaling(env: dict[str, str], backlog: int, workers: int) -> dict[str, Any]:
    """Fold what is pending first, then 1 process vs `workers` processes on equal
    backlogs (1, N, 1, N: the two pairs bracket changes in the machine's load)."""
    from fleet.telemetry.rollup_fold import fold_pending

    fold_pending(max_batches=10**9)
    runs: list[dict[str, Any]] = []
    for procs in (1, workers, 1, workers):
        made = make_backlog(backlog)
        run = run_folders(procs, env)
        run["made"] = made
        runs.append(run)
        print(f"  fold with {procs} process(es): {run}", flush=True)
        time.sleep(1)
    one = [r["rate"] for r in runs if r["procs"] == 1]
    many = [r["rate"] for r in runs if r["procs"] == workers]
    return {
        "workers": workers,
        "backlog": backlog,
        "runs": runs,
        "speedup": round(sum(many) / max(sum(one), 1e-9), 2),
        "db": DB_NAME,
    }
