"""The measured phases: request load, convergence, folds, gates, profile."""

from __future__ import annotations

import cProfile
import json
import multiprocessing as mp
import pstats
import resource
import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import API, ROOT
from .devices import _device_proc
from .load import _pct
from .server import CpuMeter, RssSampler, Server, loadavg


@dataclass
class Convergence:
    devices: int
    poll: float
    assign_s: float
    assign_p50_ms: float
    assign_cpu_s: float
    assign_pg_cpu_s: float
    t_all_active_from_assign_start: float
    t_all_active_from_assign_end: float
    milestones: dict[int, float]
    active: int
    failed_events: int
    install_p50_s: float
    install_p95_s: float
    client_cpu_s: float
    web_cpu_s: float
    pg_cpu_s: float
    wall_s: float
    requests_by_kind: dict[str, int]
    health_problems: dict[str, int]
    real_selftest: dict[str, Any]
    load: str
    machine_busy_cores: float
    payload_bytes: int
    redis_messages: int = 0


def converge(
    server: Server,
    meter: CpuMeter,
    sampler: RssSampler,
    state_root: Path,
    bundle: Any,
    poll: float,
    procs: int,
    timeout: float,
    real_selftest_device: str,
) -> Convergence:
    from django.db.models import Min

    from fleet.models import Device, DeviceEvent
    from fleet.security import director

    dirs = [str(d) for d in sorted(state_root.iterdir()) if d.is_dir()]
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(
            target=_device_proc,
            args=(server.port, dirs[i::procs], poll, [real_selftest_device], stop, out),
        )
        for i in range(procs)
    ]
    sampler.phase = "converge"
    for c in children:
        c.start()
    ready = 0
    while ready < procs:
        msg = out.get(timeout=poll * 4 + 120)
        assert msg[0] == "ready", msg
        ready += 1
    print(f"  {len(dirs)} update loops polling (every {poll:.0f} s); assigning ...", flush=True)
    devices = list(Device.objects.order_by("name"))
    a = meter.snap()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t_assign0 = time.time()
    per = []
    for device in devices:
        s = time.perf_counter()
        director.assign(device, bundle)
        per.append(time.perf_counter() - s)
    t_assign1 = time.time()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    a_mid = meter.snap()
    assign_cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(
        f"  assigned {len(devices)} in {t_assign1 - t_assign0:.1f} s ({assign_cpu:.1f} s CPU here)",
        flush=True,
    )
    deadline = t_assign0 + timeout
    active_q = DeviceEvent.objects.filter(bundle=bundle.pk, state="active")
    while time.time() < deadline:
        n = active_q.values("device_id").distinct().count()
        if n >= len(devices):
            break
        time.sleep(0.5)
    t_done = time.time()
    b = meter.snap()
    load = loadavg()
    stop.set()
    results: list[dict[str, Any]] = []
    client_cpu = 0.0
    for _ in children:
        msg = out.get(timeout=120)
        results.extend(msg[2])
        client_cpu += msg[3]
    for c in children:
        c.join(timeout=30)
    sampler.phase = "idle"
    firsts = sorted(
        r["first"].timestamp() - t_assign0
        for r in active_q.values("device_id").annotate(first=Min("received_at"))
    )
    milestones = {}
    for pct in (50, 90, 99, 100):
        k = max(1, round(len(devices) * pct / 100))
        if len(firsts) >= k:
            milestones[pct] = firsts[k - 1]
    installs = [r["installed"][1] - r["installed"][0] for r in results if r["installed"]]
    problems: dict[str, int] = {}
    for r in results:
        for h in r["health"]:
            problems[h] = problems.get(h, 0) + 1
    real = next((r for r in results if r["device"] == real_selftest_device), {})
    real_dir = next(
        (Path(d) for d in dirs if real_selftest_device in (Path(d) / "device.json").read_text()),
        None,
    )
    selftest = {}
    if real_dir is not None and (real_dir / "status.json").exists():
        selftest = json.loads((real_dir / "status.json").read_text()).get("last_selftest") or {}
    d_all = CpuMeter.delta(a, b)
    d_assign = CpuMeter.delta(a, a_mid)
    return Convergence(
        devices=len(devices),
        poll=poll,
        assign_s=t_assign1 - t_assign0,
        assign_p50_ms=1000 * statistics.median(per),
        assign_cpu_s=assign_cpu,
        assign_pg_cpu_s=d_assign["pg_cpu"],
        t_all_active_from_assign_start=(
            firsts[-1] if len(firsts) >= len(devices) else float("nan")
        ),
        t_all_active_from_assign_end=(
            firsts[-1] - (t_assign1 - t_assign0) if len(firsts) >= len(devices) else float("nan")
        ),
        milestones=milestones,
        active=len(firsts),
        failed_events=DeviceEvent.objects.filter(bundle=bundle.pk, state="failed").count(),
        install_p50_s=statistics.median(installs) if installs else float("nan"),
        install_p95_s=_pct(installs, 95),
        client_cpu_s=client_cpu,
        web_cpu_s=d_all["web_cpu"],
        pg_cpu_s=d_all["pg_cpu"],
        wall_s=t_done - t_assign0,
        requests_by_kind={},
        health_problems=problems,
        real_selftest={"outcomes": real.get("outcomes"), "selftest": selftest},
        load=load,
        machine_busy_cores=d_all["machine_busy_cores"],
        payload_bytes=int(bundle.record["cipher"]["ciphertext_length"]),
    )


def fold_timing() -> dict[str, Any]:
    """Deferred mode: fold every batch the telemetry phase left pending, as the Celery
    task would (one process, chunks of FOLD_CHUNK per transaction)."""
    from fleet.telemetry.rollup_fold import fold_pending, pending_count

    pending = pending_count()
    t0, cpu0 = time.perf_counter(), time.process_time()
    done = fold_pending(max_batches=10**9)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "pending": pending,
        "folded": done["folded"],
        "seconds": round(wall, 2),
        "rate": round(done["folded"] / wall, 1) if wall else None,
        "cpu_ms_per_batch": round(1000 * cpu / max(done["folded"], 1), 2),
    }


def gate_timing(user: Any, bundle: Any, group: Any, since: datetime) -> dict[str, Any]:
    from fleet.models import DeviceEvent, Rollout, TelemetryBatch
    from fleet.rollouts import engine as rollouts
    from fleet.rollouts import gates

    t = time.perf_counter()
    rollout = rollouts.create(
        user=user, bundle=bundle, group=group, waves=[100], gates={}, soak_seconds=0
    )
    create_s = time.perf_counter() - t
    Rollout.objects.filter(pk=rollout.pk).update(started_at=since, wave_started_at=since)
    rollout.refresh_from_db()
    times, decision, results = [], "", []
    for _ in range(3):
        t = time.perf_counter()
        decision, results = gates.evaluate(rollout)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    rollouts.apply_wave(rollout)
    apply_s = time.perf_counter() - t
    return {
        "create_s": create_s,
        "apply_wave_s": apply_s,
        "evaluate_s": statistics.median(times),
        "batches": TelemetryBatch.objects.filter(received_at__gte=since).count(),
        "events": DeviceEvent.objects.filter(received_at__gte=since).count(),
        "decision": decision,
        "gates": {r.name: r.status for r in results},
    }


def lean_lookups(creds: list[str], k: int) -> list[tuple[str, float]]:
    """What the two lookups of a 304 cost as the server does them, and leaner (not in the
    server code: evidence for where a fix would land). ms per poll, this process."""
    from django.db import connection

    from fleet.models import Assignment, Device
    from fleet.models.devices import digest
    from fleet.security.director import current_assignment

    digests = [digest(c) for c in creds[:k]]
    sql = (
        "SELECT d.id, d.revoked_at, d.last_seen_at, a.bundle_id, b.release, a.created_at "
        "FROM fleet_device d LEFT JOIN fleet_assignment a "
        "ON a.device_id = d.id AND a.ended_at IS NULL "
        "LEFT JOIN fleet_bundle b ON b.id = a.bundle_id WHERE d.credential_digest = %s"
    )

    def as_now() -> None:
        for dg in digests:
            device = Device.objects.filter(credential_digest=dg).first()
            current_assignment(device)

    def lean_orm() -> None:
        for dg in digests:
            row = (
                Device.objects.filter(credential_digest=dg)
                .values_list("pk", "revoked_at", "last_seen_at")
                .first()
            )
            Assignment.objects.filter(device_id=row[0], ended_at__isnull=True).values_list(
                "bundle_id", "bundle__release", "created_at"
            ).first()

    def one_sql() -> None:
        with connection.cursor() as cur:
            for dg in digests:
                cur.execute(sql, [dg])
                cur.fetchone()

    out = []
    for label, fn in (
        ("as the server does it: Device .first() + current_assignment (select_related)", as_now),
        ("lean ORM: .values_list() of the needed columns, two queries", lean_orm),
        ("one hand-written JOIN through the cursor", one_sql),
    ):
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) / len(digests))
        out.append((label, 1000 * statistics.median(times)))
    return out


def profile_state(creds_etags: list[tuple[str, str]], n: int) -> dict[str, Any]:
    """The 304 path in this process (django.test.Client, same PostgreSQL), three ways."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from fleet.models import Device

    clients = [
        (Client(HTTP_AUTHORIZATION=f"Bearer {c}", HTTP_IF_NONE_MATCH=e), c) for c, e in creds_etags
    ]

    def one_pass(k: int) -> float:
        t = time.perf_counter()
        for i in range(k):
            r = clients[i % len(clients)][0].get(f"{API}/state")
            assert r.status_code == 304, r.status_code
        return (time.perf_counter() - t) / k

    k = min(len(clients), 500)
    one_pass(len(clients))  # warm, and last_seen_at fresh for every device
    fresh = statistics.median(one_pass(k) for _ in range(3))
    writes = []
    for _ in range(3):
        Device.objects.update(last_seen_at=None)
        writes.append(one_pass(k))
    with CaptureQueriesContext(connection) as q_fresh:
        clients[0][0].get(f"{API}/state")
    sqls = [q["sql"] for q in q_fresh.captured_queries]  # before reset_queries clears them
    Device.objects.filter(credential_digest__isnull=False).update(last_seen_at=None)
    with CaptureQueriesContext(connection) as q_write:
        clients[0][0].get(f"{API}/state")
    n_write = len(q_write.captured_queries)
    lean = lean_lookups([c for _, c in clients], k)
    # DB round trips alone: the same SELECTs with psycopg, no Django.
    with connection.cursor() as cur:
        t = time.perf_counter()
        for _ in range(k):
            for sql in sqls:
                cur.execute(sql)
                cur.fetchall()
        raw_db = (time.perf_counter() - t) / k
    prof = cProfile.Profile()
    prof.enable()
    one_pass(n)
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]

    def cum(path_end: str, func: str) -> float:
        best = 0.0
        for (fname, _, fn), v in stats.stats.items():  # type: ignore[attr-defined]
            if fn == func and fname.endswith(path_end):
                best = max(best, v[3])
        return 1000 * best / n

    wanted = [
        ("whole request (test client, in-process)", "django/test/client.py", "get"),
        ("Django handler + middleware", "django/core/handlers/base.py", "get_response"),
        ("ninja: auth, view, response", "ninja/operation.py", "run"),
        ("DeviceAuth.authenticate (credential lookup)", "fleet/api/device_api.py", "authenticate"),
        (
            "desired_state view (assignment + body + ETag)",
            "fleet/api/device_api.py",
            "desired_state",
        ),
        ("current_assignment query", "fleet/security/director.py", "current_assignment"),
        ("psycopg Cursor.execute (DB round trips)", "psycopg/cursor.py", "execute"),
        ("SQL compilation", "django/db/models/sql/compiler.py", "as_sql"),
        ("state_etag (json + sha256)", "fleet/devices/state.py", "state_etag"),
    ]
    breakdown = [(label, cum(p, f)) for label, p, f in wanted]
    top = []
    for (fname, line, fn), v in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: kv[1][2],
        reverse=True,
    )[:12]:
        short = fname.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
        top.append((f"{short}:{line}({fn})", 1000 * v[2] / n, v[1] / n))
    return {
        "fresh_ms": 1000 * fresh,
        "write_ms": 1000 * statistics.median(writes),
        "queries_fresh": len(sqls),
        "queries_write": n_write,
        "lean": lean,
        "sql": sqls,
        "raw_db_ms": 1000 * raw_db,
        "breakdown": breakdown,
        "top": top,
        "profiled_total_ms": 1000 * total / n,
        "n": n,
    }
