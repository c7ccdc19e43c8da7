"""Request load phases: keep-alive polls and telemetry from spawned clients, CPU per request."""

from __future__ import annotations

import http.client
import multiprocessing as mp
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .common import API
from .loadgen import _poll_proc
from .server import CpuMeter, RssSampler, Server, loadavg


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


@dataclass
class LoadResult:
    name: str
    workers: int
    procs: int
    conns: int
    requests: int
    seconds: float
    rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]
    errors: int
    web_cpu: float
    pg_cpu: float
    client_cpu: float
    machine_busy_cores: float
    load: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def web_ms(self) -> float:
        return 1000 * self.web_cpu / max(1, self.requests)

    @property
    def pg_ms(self) -> float:
        return 1000 * self.pg_cpu / max(1, self.requests)


def run_load(
    name: str,
    server: Server,
    meter: CpuMeter,
    sampler: RssSampler,
    work: list[tuple[str, str]],
    mode: str,
    procs: int,
    conns: int,
    warmup: float,
    seconds: float,
    template: str = "",
    during: Any = None,
) -> LoadResult:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    shuffled = list(work)
    random.Random(1).shuffle(shuffled)
    children = [
        ctx.Process(
            target=_poll_proc,
            args=(server.port, shuffled[i::procs], conns, mode, warmup, seconds, go, out, template),
        )
        for i in range(procs)
    ]
    for c in children:
        c.start()
    time.sleep(2.0)  # spawned interpreters import the agent before the clock starts
    sampler.phase = name
    go.set()
    time.sleep(warmup)
    a = meter.snap()
    extra: dict[str, Any] = {}
    if during is not None:
        extra = during(seconds)
    else:
        time.sleep(seconds)
    b = meter.snap()
    load = loadavg()
    results = [out.get(timeout=120) for _ in children]
    for c in children:
        c.join(timeout=30)
    sampler.phase = "idle"
    d = CpuMeter.delta(a, b)
    lat = [x for r in results for x in r["lat"]]
    statuses: dict[int, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    res = LoadResult(
        name=name,
        workers=server.workers,
        procs=procs,
        conns=procs * conns,
        requests=len(lat),
        seconds=seconds,
        rate=len(lat) / seconds,
        p50_ms=1000 * _pct(lat, 50),
        p95_ms=1000 * _pct(lat, 95),
        p99_ms=1000 * _pct(lat, 99),
        statuses=statuses,
        errors=sum(r["errors"] for r in results),
        web_cpu=d["web_cpu"],
        pg_cpu=d["pg_cpu"],
        client_cpu=sum(r["cpu"] for r in results),
        machine_busy_cores=d["machine_busy_cores"],
        load=load,
        extra=extra,
    )
    print(
        f"  {name} ({server.workers}w): {res.rate:,.0f}/s p50 {res.p50_ms:.1f} ms "
        f"p95 {res.p95_ms:.1f} ms statuses {statuses} errors {res.errors} "
        f"web {res.web_ms:.2f} ms/req pg {res.pg_ms:.2f} ms/req load {load}",
        flush=True,
    )
    return res


def duplicate_race(port: int, cred: str, template: str, rounds: int = 30) -> dict[int, int]:
    """The same batch sent twice at the same instant (an agent's retry racing its first
    try): the server should answer 202 + 200 (duplicate), never 5xx."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    for _ in range(rounds):
        body = template.replace("@BATCH@", str(uuid.uuid4())).encode()
        barrier = threading.Barrier(2)

        def send(body: bytes = body, barrier: threading.Barrier = barrier) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.connect()
            barrier.wait()
            conn.request(
                "POST",
                f"{API}/telemetry",
                body=body,
                headers={"Authorization": f"Bearer {cred}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            resp.read()
            conn.close()
            with lock:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return statuses


def stale_last_seen(seconds: float) -> dict[str, Any]:
    """Every second, forget every device's last_seen_at, so each device's next poll
    writes it again (as it would in production at a 30 s poll interval); count them."""
    from django.db import connection

    from fleet.models import Device

    writes = 0
    resets = 0
    end = time.time() + seconds
    Device.objects.update(last_seen_at=None)
    while time.time() < end:
        time.sleep(1.0)
        writes += Device.objects.exclude(last_seen_at=None).update(last_seen_at=None)
        resets += 1
    connection.close()
    return {"last_seen_writes": writes, "resets": resets}
