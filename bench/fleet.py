"""Fleet simulator: many device update loops against gunicorn + PostgreSQL + Redis.

    python bench/fleet.py [--devices 1000] [--http-enroll 40] [--poll-interval 5]
                          [--seconds 15] [--no-four-workers]

Writes bench/reports/fleet.md. Everything runs on this machine and talks to 127.0.0.1 only.

Set-up: a fresh PostgreSQL database (`tinyfleet_bench`, dropped at the end), an unused
Redis database as the Celery broker (db 9 by default, must be empty, flushed at the end),
a temporary TINYFLEET_DATA_DIR, `manage.py migrate`, an operator and an API token from the
management commands, then gunicorn (gthread, 2 workers x 8 threads, the MALLOC_*
environment of `tinyfleet/supervise.py`). A group and an enrollment token come from the
operator API; `--http-enroll` devices enroll through the real endpoint with the agent's own
`tinyfleet_agent.fleet.enroll` (keys generated, proof signed, roots stored), the rest are
created with the Django ORM in this process (real Ed25519/X25519 keys, credential digests,
the same on-device files the agent writes at enrollment).

Phases (medians and rates over a timed window after a warm-up):
1a. unchanged desired-state polls (304 with If-None-Match), keep-alive `http.client`
    connections from several processes;
1b. the same while every poll also writes `last_seen_at` (what happens in production,
    where a device polls less often than LAST_SEEN_WRITE_INTERVAL);
1c. the same 304 polls made with the real agent client (`DeviceClient.state`, urllib,
    one TCP connection per request, as devices do);
2.  telemetry batches (the agent's `Telemetry.snapshot_and_reset()` body, unique batch_id);
3.  convergence: a real bundle (tiny BERT ONNX + tokenizer + a real golden set computed
    with onnxruntime) is published in this process (`request_publish` + `run_publish`),
    N update loops (the real `Updater` with the real `DeviceClient`: poll, metadata,
    `tuf_verify`, download, HPKE unwrap, decrypt, install to A/B slots, events) are
    started, then `director.assign` signs N director targets here (as a Celery worker
    would), and the time until every device reported "active" is taken from the
    DeviceEvent rows. Only the golden self-test's inference is stubbed, and only in the
    simulator (`SimUpdater._self_test`); device 0 runs the unmodified Updater, real
    self-test included, as a check that the golden set is real.
4.  server RSS: summed VmRSS of the gunicorn workers, sampled every 100 ms.
5.  rollout engine on the same data: `rollouts.create` (apply_wave over N devices) and
    `gates.evaluate` over the telemetry ingested in phase 2.
6.  a small in-process profile of the 304 path (django.test.Client + cProfile).
Then phases 1a and 2 again with 4 gunicorn workers (skip with --no-four-workers).

CPU accounting per phase: gunicorn workers and PostgreSQL backends of the bench database
(utime+stime from /proc), the load generators (getrusage), and the whole machine
(/proc/stat), so per-core figures can be derived even on a shared machine.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import multiprocessing as mp
import os
import platform
import pstats
import random
import re
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT / "agent"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _server import Gunicorn  # noqa: E402  (bench/ is sys.path[0])
from tinyfleet_agent._internal.client import DeviceClient  # noqa: E402
from tinyfleet_agent._internal.identity import load_or_create_keys  # noqa: E402
from tinyfleet_agent._internal.runtime import available_runtimes  # noqa: E402
from tinyfleet_agent._internal.slots import SlotStore  # noqa: E402
from tinyfleet_agent._internal.telemetry import Telemetry  # noqa: E402
from tinyfleet_agent._internal.updater import Updater  # noqa: E402

REPORT = ROOT / "bench" / "reports" / "fleet.md"
BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "tinyfleet_bench"
API = "/api/device/v1"
RSS_SAMPLE_S = 0.1
ANALYSIS_START = "<!-- analysis:start (hand-written, kept across runs: re-check it) -->"
ANALYSIS_END = "<!-- analysis:end -->"


# ================================================================ device-side (children)


class SimUpdater(Updater):
    """The agent's Updater with the golden self-test's inference stubbed out.

    Everything before it (poll, metadata, verification, download, unwrap, decrypt,
    extract with the golden digest check) and after it (atomic slot switch, release
    floor, events) is the real code."""

    def _self_test(self, directory: Path, assignment: Any) -> None:
        self.report("self-test", assignment.record.bundle_id)
        self._health(last_selftest={"passed": True, "stubbed": True})

    def check_once(self) -> str:
        start = time.time()
        result = super().check_once()
        self.sim_log.append((start, time.time(), result))  # type: ignore[attr-defined]
        return result


class RealUpdater(Updater):
    def check_once(self) -> str:
        start = time.time()
        result = super().check_once()
        self.sim_log.append((start, time.time(), result))  # type: ignore[attr-defined]
        return result


def _device_proc(
    port: int,
    dirs: list[str],
    poll: float,
    real_selftest: list[str],
    stop: Any,
    out: Any,
) -> None:
    """One process of simulated devices: a thread per device running Updater.run."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    server = f"http://127.0.0.1:{port}"
    stop_local = threading.Event()
    updaters: list[tuple[str, Updater, list[str]]] = []
    for d in dirs:
        state_dir = Path(d)
        device = json.loads((state_dir / "device.json").read_text())
        credential = (state_dir / "credential").read_text().strip()
        health: list[str] = []
        cls = RealUpdater if device["device_id"] in real_selftest else SimUpdater
        updater = cls(
            client=DeviceClient(server, credential),
            keys=load_or_create_keys(state_dir),
            device_id=device["device_id"],
            store=SlotStore(state_dir),
            state_dir=state_dir,
            threads=1,
            poll_interval=poll,
            on_health=lambda _h=health, **v: _h.append(str(v.get("update", ""))),
        )
        updater.sim_log = []  # type: ignore[attr-defined]
        updaters.append((device["device_id"], updater, health))
    threads = []
    gap = poll / max(1, len(updaters))
    for _, updater, _ in updaters:  # staggered like a real fleet, not a thundering herd
        t = threading.Thread(target=updater.run, args=(stop_local,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(gap)
    while not all(u.sim_log for _, u, _ in updaters):  # type: ignore[attr-defined]
        time.sleep(0.05)
    out.put(("ready", os.getpid(), len(updaters)))
    stop.wait()
    stop_local.set()
    for t in threads:
        t.join(timeout=30)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    results = []
    for device_id, updater, health in updaters:
        log = updater.sim_log  # type: ignore[attr-defined]
        installed = [(s, e) for s, e, r in log if r == "installed"]
        results.append(
            {
                "device": device_id,
                "checks": len(log),
                "outcomes": sorted({r for _, _, r in log}),
                "installed": installed[0] if installed else None,
                "health": sorted(set(health) - {"idle", ""}),
                "failed": dict(updater.failed),
            }
        )
    out.put(("done", os.getpid(), results, ru.ru_utime + ru.ru_stime))


# ============================================================ load generators (children)


def _poll_proc(
    port: int,
    work: list[tuple[str, str]],
    conns: int,
    mode: str,
    warmup: float,
    duration: float,
    go: Any,
    out: Any,
    template: str = "",
) -> None:
    """mode: "poll" (keep-alive GET /state, If-None-Match), "agent" (DeviceClient.state,
    a new connection per request), "telemetry" (keep-alive POST /telemetry)."""
    slices = [work[i::conns] for i in range(conns)]
    lock = threading.Lock()
    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors = [0]
    go.wait()
    t0 = time.time()
    w0, w1 = t0 + warmup, t0 + warmup + duration

    def run(items: list[tuple[str, str]]) -> None:
        mine: list[float] = []
        st: dict[int, int] = {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        clients = [DeviceClient(f"http://127.0.0.1:{port}", c) for c, _ in items]
        i = 0
        while True:
            cred, etag = items[i % len(items)]
            start = time.time()
            if start >= w1:
                break
            try:
                if mode == "agent":
                    status = clients[i % len(items)].state(etag).status
                elif mode == "poll":
                    conn.request(
                        "GET",
                        f"{API}/state",
                        headers={"Authorization": f"Bearer {cred}", "If-None-Match": etag},
                    )
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                else:
                    body = template.replace("@BATCH@", str(uuid.uuid4())).encode()
                    conn.request(
                        "POST",
                        f"{API}/telemetry",
                        body=body,
                        headers={
                            "Authorization": f"Bearer {cred}",
                            "Content-Type": "application/json",
                        },
                    )
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
            except (OSError, http.client.HTTPException, Exception):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    errors[0] += 1
                i += 1
                continue
            end = time.time()
            if w0 <= start and end <= w1:
                mine.append(end - start)
                st[status] = st.get(status, 0) + 1
            i += 1
        conn.close()
        with lock:
            lat.extend(mine)
            for k, v in st.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=run, args=(s,)) for s in slices if s]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    out.put({"lat": lat, "statuses": statuses, "errors": errors[0], "cpu": cpu})


def telemetry_template(bundle: str) -> str:
    """A realistic batch: the agent's own collector after a few requests and feedback."""
    telemetry = Telemetry(agent_version="0.1.0")
    telemetry.set_bundle(bundle, load_ms=41.5)
    rng = random.Random(7)
    for _ in range(25):
        n = rng.randint(5, 60)
        telemetry.record_request(bundle, rng.uniform(3, 40), [n], [rng.uniform(0.4, 1.0)])
    telemetry.record_error(bundle, "bad-request")
    telemetry.record_feedback(bundle, "ok", "ok")
    telemetry.record_feedback(bundle, "ok", "fault")
    telemetry.record_golden(bundle, True, 1.0)
    body = telemetry.snapshot_and_reset()
    body["batch_id"] = "@BATCH@"
    return json.dumps(body)


# ======================================================================== the server


def _stat_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str = "VmRSS:") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return float(sum(parts) - idle), float(sum(parts))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Server(Gunicorn):
    """gunicorn as `make run` starts it (gthread, 8 threads per worker, the MALLOC_*
    settings); the bench sets the worker count per phase."""

    threads: int = 8

    @property
    def env(self) -> dict[str, str]:
        from tinyfleet.supervise import WEB_MALLOC

        return {**super().env, **WEB_MALLOC}

    def request(self, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
        return self.request_json(method, path, body, token=token)


class RssSampler(threading.Thread):
    """Summed VmRSS of the gunicorn workers every 100 ms; peak per phase label."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.phase = "idle"
        self.peak: dict[str, int] = {}
        self.master_peak = 0
        self.per_worker_peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            proc = self.server.proc
            if proc is not None and proc.poll() is None:
                rss = [_status_kib(p) or 0 for p in self.server.worker_pids()]
                key = f"{self.server.workers}w:{self.phase}"
                self.peak[key] = max(self.peak.get(key, 0), sum(rss))
                self.per_worker_peak = max(self.per_worker_peak, *rss, 0)
                self.master_peak = max(self.master_peak, _status_kib(proc.pid) or 0)
            self._halt.wait(RSS_SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class CpuMeter:
    """CPU seconds of gunicorn workers, PostgreSQL backends of the bench DB, machine."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def _pg_pids(self) -> list[int]:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            rows = conn.execute(
                "select pid from pg_stat_activity where datname = %s", (DB_NAME,)
            ).fetchall()
        return [r[0] for r in rows]

    def snap(self) -> dict[str, Any]:
        web = {p: _stat_cpu(p) for p in self.server.worker_pids()}
        pg = {p: _stat_cpu(p) for p in self._pg_pids()}
        busy, total = _machine_cpu()
        return {"web": web, "pg": pg, "busy": busy, "total": total, "t": time.time()}

    @staticmethod
    def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
        def side(name: str) -> float:
            s = 0.0
            for pid, v in b[name].items():
                if v is None:
                    continue
                s += v - (a[name].get(pid) or 0.0)
            return s

        tick = os.sysconf("SC_CLK_TCK")
        cores = os.cpu_count() or 1
        wall = b["t"] - a["t"]
        return {
            "wall": wall,
            "web_cpu": side("web"),
            "pg_cpu": side("pg"),
            "machine_busy_cores": (b["busy"] - a["busy"]) / tick / wall,
            "machine_cores": cores,
            "machine_busy_frac": (b["busy"] - a["busy"]) / max(1.0, b["total"] - a["total"]),
        }


# =========================================================================== set-up


def setup_django(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith(("DATABASE_", "CELERY_"))]:
        del os.environ[key]
    os.environ.update(env)
    import django

    django.setup()


def build_version(work: Path) -> Any:
    """A ready ONNX version: tiny BERT + WordPiece tokenizer + a golden set whose
    references were computed with onnxruntime (what an export job stores)."""
    import hashlib
    import io
    import zipfile

    import numpy as np
    import onnxruntime as ort
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from tokenizers import Tokenizer

    from compression.models import ModelVersion, RegisteredModel, VersionStatus
    from compression.pipeline.golden import build_golden, golden_tolerance
    from tests.fixtures.tiny_models import build_tiny_bert_onnx, build_tiny_hf_dir

    folder = work / "model"
    folder.mkdir()
    build_tiny_bert_onnx(folder / "model.onnx", layers=2, hidden=32, vocab=20)
    hf = build_tiny_hf_dir(work / "hf")
    shutil.copy(hf / "tokenizer.json", folder / "tokenizer.json")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    sentences = [
        "the tiny model runs fast on small chips",
        "edge device",
        "a fleet of devices",
        "the model runs on the edge",
        "small chips running tiny models",
        "fast fleet",
        "the device runs",
        "a tiny edge model",
    ]
    feeds = []
    for s in sentences:
        enc = tok.encode(s)
        feeds.append(
            {
                "input_ids": np.array([enc.ids], np.int64),
                "attention_mask": np.array([enc.attention_mask], np.int64),
                "token_type_ids": np.array([enc.type_ids], np.int64),
            }
        )
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    refs = [session.run(None, f)[0] for f in feeds]
    tolerance = golden_tolerance("text-embedding", refs, refs, feeds)
    golden_path = work / "golden.npz"
    golden_sha = build_golden(golden_path, feeds, refs, "text-embedding", tolerance)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("model.onnx", "tokenizer.json"):
            zf.write(folder / name, f"model/{name}")
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    key = default_storage.save(f"models/{sha[:2]}/{sha}/model.zip", ContentFile(data))
    gkey = default_storage.save(f"golden/{golden_sha}.npz", ContentFile(golden_path.read_bytes()))
    model, _ = RegisteredModel.objects.get_or_create(
        name="bench-embedder", defaults={"task": "text-embedding"}
    )
    return ModelVersion.objects.create(
        model=model,
        number=1,
        format="onnx",
        storage_key=key,
        original_filename="model.zip",
        size_bytes=len(data),
        sha256=sha,
        status=VersionStatus.READY,
        recipe="onnx-fp32",
        pipeline={"pooling": "mean", "normalize": True, "max_seq_len": 64},
        metrics={"fidelity": {"cosine_mean": 1.0}, "latency_ms": 0.5, "size_bytes": len(data)},
        golden_key=gkey,
        golden_sha256=golden_sha,
        lineage_info={"recipe": "onnx-fp32", "params": {}},
    )


def http_enroll(server: Server, state_root: Path, token: str, n: int) -> dict[str, Any]:
    """n enrollments through POST /enroll with the agent's own enroll(), 8 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from tinyfleet_agent.fleet import enroll

    url = f"http://127.0.0.1:{server.port}"

    def one(i: int) -> float:
        start = time.perf_counter()
        enroll(
            state_root / f"dev-{i:05d}", url, token, name=f"sim-{i:05d}", labels={"site": "bench"}
        )
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        lat = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return {
        "n": n,
        "wall": wall,
        "rate": n / wall,
        "p50": statistics.median(lat),
        "p95": _pct(lat, 95),
        "concurrency": 8,
    }


def bulk_devices(
    state_root: Path, start: int, n: int, token_id: int, group_id: int, port: int, poll: int
) -> dict[str, Any]:
    """n devices straight into the database, with the files the agent writes at enrollment."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from tinyfleet_agent._internal.identity import write_secret
    from tinyfleet_agent._internal.record import canonical_json
    from tinyfleet_agent._internal.stream_aead import atomic_write_bytes
    from tinyfleet_agent._internal.tuf_verify import TrustedState
    from tinyfleet_agent.fleet import root_fingerprint

    from fleet.models import Device
    from fleet.models.devices import digest
    from fleet.security.device_metadata import trusted_roots

    t0 = time.perf_counter()
    roots = trusted_roots()
    trust = TrustedState.bootstrap(
        canonical_json(roots["image"]), canonical_json(roots["director"])
    ).to_json()
    fingerprint = root_fingerprint(roots["image"])
    rows = []
    runtimes = available_runtimes()
    for i in range(start, start + n):
        identity, decryption = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        credential = "tfd_" + secrets.token_urlsafe(32)
        device_id = uuid.uuid4()
        d = state_root / f"dev-{i:05d}"
        d.mkdir(mode=0o700)
        write_secret(d / "identity.key", identity.private_bytes_raw())
        write_secret(d / "decryption.key", decryption.private_bytes_raw())
        write_secret(d / "credential", credential.encode())
        atomic_write_bytes(d / "trust.json", trust)
        device = {
            "device_id": str(device_id),
            "server": f"http://127.0.0.1:{port}",
            "name": f"sim-{i:05d}",
            "poll_interval": poll,
            "image_root_fingerprint": fingerprint,
        }
        atomic_write_bytes(d / "device.json", json.dumps(device).encode())
        rows.append(
            Device(
                id=device_id,
                name=f"sim-{i:05d}",
                labels={"site": "bench"},
                # The runtimes a real agent here reports: rollouts pick each device's
                # variant from them.
                facts={"arch": platform.machine(), "runtimes": runtimes, "simulated": True},
                identity_public_key=identity.public_key().public_bytes_raw().hex(),
                encryption_public_key=decryption.public_key().public_bytes_raw().hex(),
                credential_digest=digest(credential),
                enrolled_with_id=token_id,
            )
        )
    Device.objects.bulk_create(rows, batch_size=500)
    through = Device.groups.through
    through.objects.bulk_create(
        [through(device_id=r.id, group_id=group_id) for r in rows], batch_size=1000
    )
    wall = time.perf_counter() - t0
    return {"n": n, "wall": wall, "rate": n / wall}


def device_creds(state_root: Path) -> list[str]:
    return [
        (d / "credential").read_text().strip() for d in sorted(state_root.iterdir()) if d.is_dir()
    ]


def fetch_etags(server: Server, creds: list[str]) -> list[tuple[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    out = []
    for cred in creds:
        conn.request("GET", f"{API}/state", headers={"Authorization": f"Bearer {cred}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        out.append((cred, resp.headers["ETag"]))
    conn.close()
    return out


# ========================================================================== phases


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


# ========================================================================== report


def machine_info() -> dict[str, str]:
    import celery
    import cryptography
    import django
    import gunicorn
    import psycopg
    import tuf

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1])
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        pg = conn.execute("show server_version").fetchone()[0]
    redis_v = "unknown"
    try:
        import redis

        redis_v = redis.Redis(host="127.0.0.1", port=6379).info("server")["redis_version"]
    except Exception as exc:
        redis_v = f"unknown ({exc})"
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "RAM": f"{mem / 1024**2:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "gunicorn": gunicorn.__version__,
        "PostgreSQL": pg,
        "psycopg": psycopg.__version__,
        "Redis": redis_v,
        "Celery": celery.__version__,
        "python-tuf": tuf.__version__,
        "cryptography": cryptography.__version__,
        "CPU speed reference (`sum(range(1000))`, best of 5)": python_speed(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def python_speed() -> str:
    """A one-line yardstick so readers can scale the per-request CPU to their cores."""
    import timeit

    best = min(timeit.repeat("sum(range(1000))", number=20000, repeat=5)) / 20000
    return f"{best * 1e6:.1f} us"


def keep_analysis(text: str, report: Path) -> str:
    """Carry the hand-written analysis block of an existing report into the new one."""
    if not report.exists():
        return text
    old = report.read_text()
    if ANALYSIS_START not in old or ANALYSIS_END not in old:
        return text
    block = old[old.index(ANALYSIS_START) : old.index(ANALYSIS_END)]
    return text[: text.index(ANALYSIS_START)] + block + text[text.index(ANALYSIS_END) :]


def ours(r: LoadResult) -> float:
    """Cores this bench's server, database backends and load generator kept busy."""
    return (r.web_cpu + r.pg_cpu + r.client_cpu) / r.seconds


def render(ctx: dict[str, Any]) -> str:
    info = ctx["info"]
    loads: list[LoadResult] = ctx["loads"]
    conv: Convergence = ctx["convergence"]
    enr = ctx["enroll"]
    bulk = ctx["bulk"]
    prof = ctx["profile"]
    gates_t = ctx["gates"]
    rss = ctx["rss"]
    lines = [
        "# Fleet benchmark",
        "",
        "Generated by `python bench/fleet.py` "
        f"(`{' '.join(ctx['argv'])}`). One run; rates are over a timed window after a "
        "warm-up, latencies are medians/percentiles of every request in the window.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        f"| load average (1/5/15 min) before | {ctx['load_before']} |",
        f"| load average after | {ctx['load_after']} |",
        "",
        "**The machine is shared**: other engineers' jobs ran at the same time (see the "
        "load averages and the 'machine busy' column: cores busy machine-wide, ours "
        "included). Absolute rates are therefore a floor; the CPU-per-request columns are "
        "the better basis for extrapolation (docs/scaling.md).",
        "",
        "## Results",
        "",
        "| measurement | result | target |",
        "|---|---|---|",
    ]
    first = {(r.name, r.workers): r for r in loads}
    a = first.get(("1a-304-keepalive", 2))
    t = first.get(("2-telemetry", 2))
    lines += [
        f"| unchanged polls (304), 2 workers x 8 threads | **{a.rate:,.0f}/s**, p50 "
        f"{a.p50_ms:.1f} ms, p95 {a.p95_ms:.1f} ms | >= 1,000/s |"
        if a
        else "",
        f"| telemetry batches, 2 workers x 8 threads (`TINYFLEET_TELEMETRY_FOLD="
        f"{ctx.get('telemetry_fold', 'ingest')}`) | **{t.rate:,.0f}/s**, p50 "
        f"{t.p50_ms:.1f} ms, p95 {t.p95_ms:.1f} ms | >= 300/s |"
        if t
        else "",
    ]
    fold = ctx.get("fold")
    if fold:
        lines.append(
            f"| deferred fold of those batches into rollups (one process, this bench) | "
            f"{fold['folded']:,} in {fold['seconds']} s = **{fold['rate']}/s**, "
            f"{fold['cpu_ms_per_batch']} ms CPU per batch in the folding process | |"
        )
    for r in loads:
        if r.workers == 4 and r.name in ("1a-304-keepalive", "2-telemetry"):
            lines.append(
                f"| {r.name}, 4 workers x 8 threads | {r.rate:,.0f}/s, p50 {r.p50_ms:.1f} ms, "
                f"p95 {r.p95_ms:.1f} ms | |"
            )
    lines += [
        f"| {conv.devices:,} devices converge on a new bundle (poll every {conv.poll:.0f} s) "
        f"| **{conv.t_all_active_from_assign_start:.1f} s** from the first assignment "
        f"({conv.t_all_active_from_assign_end:.1f} s after the last) | |",
        f"| director.assign for {conv.devices:,} devices (server-side signing) | "
        f"{conv.assign_s:.1f} s ({conv.devices / conv.assign_s:,.0f}/s; p50 "
        f"{conv.assign_p50_ms:.1f} ms each) | |",
        f"| enrollment through POST /enroll (agent `enroll()`, {enr['concurrency']} at a time)"
        f" | {enr['rate']:.1f} devices/s (p50 {enr['p50'] * 1000:.0f} ms, p95 "
        f"{enr['p95'] * 1000:.0f} ms; {enr['n']} devices) | |",
        f"| devices created with the ORM (keys, files, rows) | {bulk['rate']:,.0f} devices/s "
        f"({bulk['n']:,} devices) | |",
        f"| gunicorn workers' summed VmRSS, peak over the whole run | "
        f"{max(rss['peaks'].values()) / 1024:.0f} MiB (max single worker "
        f"{rss['per_worker'] / 1024:.0f} MiB; master {rss['master'] / 1024:.0f} MiB) | |",
        "",
        ANALYSIS_START,
        "_(hand-written analysis of this run goes here; it is kept when the report is "
        "regenerated)_",
        ANALYSIS_END,
        "",
        "### Request phases",
        "",
        "CPU columns are CPU time per request: gunicorn workers (`web`), PostgreSQL "
        "backends of the bench database (`pg`), and the load generator (`client`).",
        "",
        "| phase | workers | client procs x conns | requests | rate | p50 | p95 | p99 "
        "| statuses | client errors | web CPU/req | pg CPU/req | client CPU/req "
        "| machine busy (of 2 cores) | of which this bench / others | load avg after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in loads:
        lines.append(
            f"| {r.name} | {r.workers} | {r.procs} x {r.conns // r.procs} | {r.requests:,} "
            f"| **{r.rate:,.0f}/s** | {r.p50_ms:.1f} ms | {r.p95_ms:.1f} ms | {r.p99_ms:.1f} ms "
            f"| {r.statuses} | {r.errors} | {r.web_ms:.2f} ms | {r.pg_ms:.2f} ms "
            f"| {1000 * r.client_cpu / max(1, r.requests):.2f} ms | {r.machine_busy_cores:.2f} "
            f"| {ours(r):.2f} / {max(0.0, r.machine_busy_cores - ours(r)):.2f} | {r.load} |"
        )
    b = first.get(("1b-304-writes-last-seen", 2))
    if b and b.extra:
        lines += [
            "",
            f"In 1b the bench cleared every device's `last_seen_at` once a second "
            f"({b.extra['resets']} times) and counted {b.extra['last_seen_writes']:,} writes "
            f"by polls, against {b.requests:,} polls completed inside the window: about "
            "every poll wrote `last_seen_at`, as every poll does in production when the "
            "poll interval (30 s default) exceeds LAST_SEEN_WRITE_INTERVAL (10 s).",
        ]
    lines += [
        "",
        "Derived per-core capacity (1 / (web + pg CPU per request); the load generator excluded):",
        "",
        "| phase | workers | web + pg CPU per request | requests/s per busy core |",
        "|---|---|---|---|",
    ]
    for r in loads:
        per = r.web_ms + r.pg_ms
        lines.append(f"| {r.name} | {r.workers} | {per:.2f} ms | {1000 / per:,.0f} |")
    lines += [
        "",
        "### Convergence",
        "",
        f"- {conv.devices:,} update loops in {ctx['device_procs']} processes (a thread "
        f"each), poll interval {conv.poll:.0f} s (server `TINYFLEET_DEVICE_POLL_INTERVAL`,"
        " jittered 0.8-1.2x by the agent), started staggered over one interval and all "
        "polling (304s) before the first assignment.",
        f"- Offered load before any install: {conv.devices:,} devices / {conv.poll:.0f} s "
        f"= {conv.devices / conv.poll:,.0f} polls/s; compare with phase 1c's "
        f"{first[('1c-304-agent-client', 2)].rate:,.0f}/s measured with the same client "
        "code on this machine at the time.",
        f"- Encrypted payload: {conv.payload_bytes:,} bytes (tiny BERT ONNX, 2 layers, "
        "hidden 32, WordPiece tokenizer, 8-example golden set).",
        f"- `director.assign` in this process, one device at a time (each: HPKE wrap, "
        f"Ed25519 signature, two inserts, the director lock): {conv.assign_s:.1f} s wall, "
        f"{conv.assign_cpu_s:.1f} s CPU in this process "
        f"({1000 * conv.assign_cpu_s / conv.devices:.1f} ms/device) + "
        f"{conv.assign_pg_cpu_s:.1f} s PostgreSQL CPU (all backends of the DB, devices "
        "included).",
        "- Devices reporting `active` (first DeviceEvent per device), seconds after the "
        "first assignment: "
        + ", ".join(f"{p}%: {v:.1f} s" for p, v in conv.milestones.items())
        + f"; {conv.active:,}/{conv.devices:,} active, {conv.failed_events} failed events.",
        f"- One install on a device (the check that saw the change: metadata, verify, "
        f"download, unwrap, decrypt, extract, switch, with this machine's contention): p50 "
        f"{conv.install_p50_s:.2f} s, p95 {conv.install_p95_s:.2f} s.",
        f"- CPU during convergence ({conv.wall_s:.1f} s from the first assignment): gunicorn "
        f"{conv.web_cpu_s:.1f} s, PostgreSQL {conv.pg_cpu_s:.1f} s, simulated devices "
        f"{conv.client_cpu_s:.1f} s (whole device processes' lifetime); machine busy "
        f"{conv.machine_busy_cores:.2f} cores; load average after {conv.load}.",
        f"- Transient problems the agents reported (health `update`): "
        f"{conv.health_problems or 'none'}.",
        f"- Device 0 ran the unmodified Updater (real golden self-test with onnxruntime): "
        f"outcomes {conv.real_selftest.get('outcomes')}, self-test "
        f"{json.dumps(conv.real_selftest.get('selftest'))}.",
        f"- Celery messages left in the Redis broker (no worker ran; `nudge` is debounced "
        f"to one per 5 s per gunicorn process, plus the publish task): "
        f"{conv.redis_messages}.",
        "",
        "### Rollout engine on the same data",
        "",
        f"- `rollouts.create` over the {conv.devices:,}-device group (waves [100], every "
        f"device already assigned, so apply_wave only checks): {gates_t['create_s']:.2f} s; "
        f"`apply_wave` again: {gates_t['apply_wave_s']:.2f} s.",
        f"- `gates.evaluate` over {gates_t['batches']:,} telemetry batches and "
        f"{gates_t['events']:,} device events (rollout start moved back to the start of "
        f"the bench so phase 2's batches count): {gates_t['evaluate_s']:.2f} s (median of "
        f"3); decision {gates_t['decision']!r}, gates {gates_t['gates']}.",
        "",
        "### Server memory",
        "",
        "| gunicorn config : phase | summed worker VmRSS peak |",
        "|---|---|",
        *(f"| {k} | {v / 1024:.0f} MiB |" for k, v in sorted(rss["peaks"].items())),
        "",
        "## Where the time goes in the 304 path",
        "",
        f"In-process (django.test.Client against the same PostgreSQL, no gunicorn/HTTP), "
        f"{prof['n']:,} requests:",
        "",
        f"- {prof['fresh_ms']:.2f} ms per 304 when `last_seen_at` is fresh "
        f"({prof['queries_fresh']} queries), {prof['write_ms']:.2f} ms when the poll also "
        f"writes it ({prof['queries_write']} queries, an autocommit UPDATE).",
        f"- The same {prof['queries_fresh']} SELECTs sent straight through the psycopg cursor "
        f"(no ORM): {prof['raw_db_ms']:.2f} ms per request.",
        "",
        "The two lookups alone, as the server does them and leaner (ms per poll, this "
        "process; the leaner forms are not in the server code):",
        "",
        "| lookup | ms per poll |",
        "|---|---|",
        *(f"| {label} | {ms:.2f} |" for label, ms in prof["lean"]),
        "",
        "cProfile, cumulative ms per request (profiler overhead inflates everything "
        f"~2x; whole profiled pass {prof['profiled_total_ms']:.2f} ms/request). The "
        "profiled pass is each device's first poll after `last_seen_at` was cleared, so "
        "it includes the UPDATE (3 queries per request):",
        "",
        "| part | cumulative ms / request |",
        "|---|---|",
        *(f"| {label} | {ms:.3f} |" for label, ms in prof["breakdown"]),
        "",
        "Top functions by own time:",
        "",
        "| function | own ms / request | calls / request |",
        "|---|---|---|",
        *(f"| `{name}` | {ms:.3f} | {calls:.1f} |" for name, ms, calls in prof["top"]),
        "",
        "The two queries:",
        "",
        *(f"    {q}" for q in prof["sql"]),
        "",
    ]
    lines += [
        "## Telemetry replay race",
        "",
        "The same batch (same `batch_id`) posted twice at the same instant on two "
        f"connections, {sum(ctx['dup_race'].values()) // 2} times: answers "
        f"{ctx['dup_race']} (correct is one 202 and one 200 per pair).",
        "",
    ]
    lines += ctx.get("notes", [])
    lines += [
        "## Method",
        "",
        "- *Server*: fresh PostgreSQL database `tinyfleet_bench` (trust auth on "
        "127.0.0.1, dropped afterwards), Redis db "
        f"{ctx['redis_db']} as `CELERY_BROKER_URL` (empty before, flushed afterwards), "
        "temporary `TINYFLEET_DATA_DIR` (local artifact storage), `manage.py migrate`, "
        "`create_user bench --role operator`, `create_api_token bench`; gunicorn "
        "`tinyfleet.wsgi:application --worker-class gthread --workers 2 --threads 8` "
        "with `MALLOC_MMAP_THRESHOLD_`/`MALLOC_TRIM_THRESHOLD_` from tinyfleet/supervise.py, "
        "no access log, `DATABASE_CONN_MAX_AGE` default (60 s, persistent connections per "
        "thread). No Celery worker or beat runs (gate evaluation is timed in-process).",
        "- *Devices*: a group and an enrollment token from the operator API; "
        f"{enr['n']} devices enroll through `POST /api/device/v1/enroll` with the agent's "
        "`tinyfleet_agent.fleet.enroll` (8 threads); the rest are rows created with the ORM "
        "plus the on-device files `enroll` writes (identity.key, decryption.key, "
        "credential, trust.json from `trusted_roots()`, device.json). Device state dirs "
        "live on tmpfs (/dev/shm) so this machine's disk does not stand in for 1,000 "
        "devices' disks.",
        "- *304 polls*: each device's ETag fetched once, then client processes (spawned, "
        "no Django) with several threads, each owning one keep-alive `http.client` "
        "connection, cycle through a shuffled share of the devices sending "
        "`If-None-Match`. 1c uses the agent's `DeviceClient.state()` instead (urllib: a "
        "new TCP connection per request).",
        "- *Telemetry*: the batch body is the agent's `Telemetry.snapshot_and_reset()` "
        "after 25 recorded requests, an error, two feedback pairs and a golden run "
        f"({ctx['telemetry_bytes']:,} bytes of JSON), with a fresh `batch_id` (uuid4) per "
        "request; answers must be 202.",
        "- *CPU*: utime+stime from /proc/PID/stat of the gunicorn workers and of the "
        "PostgreSQL backends connected to the bench database, read at the window's start "
        "and end; client CPU from getrusage in each generator process.",
        "- *Convergence*: see above. The self-test stub (`SimUpdater._self_test`) reports "
        "the `self-test` event and skips loading the model and running the golden set; "
        "device 0 runs it for real.",
        "- *Not measured here*: TLS (devices would use HTTPS; a reverse proxy terminates "
        "it), object storage/CDN for payloads (payloads were served by Django from local "
        "files), network latency.",
        "",
    ]
    return "\n".join(x for x in lines if x is not None)


# ============================================================================ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--http-enroll", type=int, default=40)
    parser.add_argument("--poll-interval", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--procs", type=int, default=3, help="load generator processes")
    parser.add_argument("--conns", type=int, default=6, help="connections per process")
    parser.add_argument("--device-procs", type=int, default=4)
    parser.add_argument("--converge-timeout", type=float, default=300.0)
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--no-four-workers", action="store_true")
    parser.add_argument(
        "--telemetry-fold",
        choices=("ingest", "deferred"),
        default="ingest",
        help="TINYFLEET_TELEMETRY_FOLD for the server (deferred: rollups folded afterwards)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    import psycopg
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=args.redis_db)
    if r.dbsize():
        raise SystemExit(f"redis db {args.redis_db} is not empty; pick another --redis-db")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname=%s", (DB_NAME,)).fetchone():
            raise SystemExit(f"database {DB_NAME} exists already; drop it first")
        conn.execute(f"create database {DB_NAME}")

    info = machine_info()
    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="tinyfleet-fleet-bench-"))
    state_root = Path(tempfile.mkdtemp(prefix="tinyfleet-fleet-devices-", dir="/dev/shm"))
    print(f"work dir {work}, device dirs {state_root}, load {load_before}", flush=True)
    env = {
        "TINYFLEET_DATA_DIR": str(work / "data"),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "TINYFLEET_MASTER_KEY": secrets.token_hex(32),
        "TINYFLEET_DEVICE_POLL_INTERVAL": str(args.poll_interval),
        "DJANGO_SETTINGS_MODULE": "tinyfleet.settings",
        "LOG_LEVEL": "WARNING",
        "TINYFLEET_TELEMETRY_FOLD": args.telemetry_fold,
    }
    server = Server(data_dir=work / "data", log=work / "gunicorn.log", extra_env=env)
    sampler = RssSampler(server)
    ctx: dict[str, Any] = {
        "info": info,
        "argv": ["python", "bench/fleet.py", *sys.argv[1:]],
        "load_before": load_before,
        "redis_db": args.redis_db,
        "telemetry_fold": args.telemetry_fold,
        "device_procs": args.device_procs,
        "loads": [],
    }
    ok = False
    try:
        t_bench = time.time()
        server.manage("migrate", "--no-input", "-v", "0")
        server.manage(
            "create_user", "bench", "--role", "operator", "--password", secrets.token_hex()
        )
        api_token = server.manage("create_api_token", "bench", "--name", "fleet-bench")
        assert api_token.startswith("tf_")
        setup_django(env)
        from django.contrib.auth import get_user_model
        from django.utils import timezone

        from fleet.models import Bundle, EnrollmentToken, Group
        from fleet.security.device_metadata import trusted_roots
        from fleet.security.publish import request_publish
        from fleet.security.publish_worker import run_publish

        since = timezone.now()
        trusted_roots()  # keys and roots exist before any worker starts
        version = build_version(work)
        t = time.perf_counter()
        bundle, _ = request_publish(version, None)
        run_publish(bundle.pk)
        publish_s = time.perf_counter() - t
        bundle = Bundle.objects.get(pk=bundle.pk)
        assert bundle.status == "published", bundle.error
        print(f"published {bundle.pk} in {publish_s:.2f} s", flush=True)

        server.start(2)
        sampler.start()
        meter = CpuMeter(server)
        status, group = server.request(
            "POST", "/api/v1/groups", {"name": "bench", "selector": "site=bench"}, api_token
        )
        assert status == 201, group
        status, tok = server.request(
            "POST", "/api/v1/enrollment-tokens", {"group": group["id"]}, api_token
        )
        assert status == 201, tok
        ctx["enroll"] = http_enroll(server, state_root, tok["token"], args.http_enroll)
        print(f"HTTP enrollment: {ctx['enroll']}", flush=True)
        ctx["bulk"] = bulk_devices(
            state_root,
            args.http_enroll,
            args.devices - args.http_enroll,
            EnrollmentToken.objects.get(pk=tok["id"]).pk,
            group["id"],
            server.port,
            args.poll_interval,
        )
        print(f"ORM devices: {ctx['bulk']}", flush=True)
        creds = device_creds(state_root)
        assert len(creds) == args.devices
        first_device = json.loads((sorted(state_root.iterdir())[0] / "device.json").read_text())[
            "device_id"
        ]

        template = telemetry_template(bundle.pk)
        ctx["telemetry_bytes"] = len(template.replace("@BATCH@", str(uuid.uuid4())))
        common = dict(procs=args.procs, conns=args.conns, warmup=args.warmup, seconds=args.seconds)

        def load_phases(with_all: bool) -> None:
            etags = fetch_etags(server, creds)
            ctx["loads"].append(
                run_load("1a-304-keepalive", server, meter, sampler, etags, "poll", **common)
            )
            if with_all:
                ctx["loads"].append(
                    run_load(
                        "1b-304-writes-last-seen",
                        server,
                        meter,
                        sampler,
                        etags,
                        "poll",
                        during=stale_last_seen,
                        **common,
                    )
                )
                ctx["loads"].append(
                    run_load(
                        "1c-304-agent-client", server, meter, sampler, etags, "agent", **common
                    )
                )
            ctx["loads"].append(
                run_load(
                    "2-telemetry",
                    server,
                    meter,
                    sampler,
                    etags,
                    "telemetry",
                    template=template,
                    **common,
                )
            )

        print("request phases, 2 workers", flush=True)
        load_phases(True)
        ctx["dup_race"] = duplicate_race(server.port, creds[-1], template)
        print(f"duplicate telemetry race: {ctx['dup_race']}", flush=True)
        ctx["fold"] = fold_timing() if args.telemetry_fold == "deferred" else None
        if ctx["fold"]:
            print(f"fold of pending batches: {ctx['fold']}", flush=True)
        print("convergence", flush=True)
        conv = converge(
            server,
            meter,
            sampler,
            state_root,
            bundle,
            float(args.poll_interval),
            args.device_procs,
            args.converge_timeout,
            first_device,
        )
        conv.redis_messages = sum(r.llen(k) for k in r.scan_iter() if r.type(k) == b"list")
        ctx["convergence"] = conv
        print(
            f"  all active {conv.t_all_active_from_assign_start:.1f} s after the first "
            f"assignment; milestones {conv.milestones}; failed {conv.failed_events}",
            flush=True,
        )
        ctx["gates"] = gate_timing(
            get_user_model().objects.get(username="bench"),
            bundle,
            Group.objects.get(pk=group["id"]),
            since,
        )
        print(f"gates: {ctx['gates']}", flush=True)
        etags = fetch_etags(server, creds)
        ctx["profile"] = profile_state(etags, 1000)
        print(
            f"profile: fresh {ctx['profile']['fresh_ms']:.2f} ms, write "
            f"{ctx['profile']['write_ms']:.2f} ms, raw db {ctx['profile']['raw_db_ms']:.2f} ms",
            flush=True,
        )
        if not args.no_four_workers:
            server.stop()
            server.start(4)
            print("request phases, 4 workers", flush=True)
            load_phases(False)
        server.stop()
        sampler.stop()
        ctx["rss"] = {
            "peaks": sampler.peak,
            "master": sampler.master_peak,
            "per_worker": sampler.per_worker_peak,
        }
        ctx["load_after"] = loadavg()
        ctx["elapsed"] = time.time() - t_bench
        log_lines = server.log.read_text(errors="replace").splitlines()
        errors = [
            line
            for line in log_lines
            if "Traceback" in line or "ERROR" in line or "WORKER TIMEOUT" in line
        ]
        kinds: dict[str, int] = {}
        for line in log_lines:
            if re.match(r"^[\w.]+(Error|Exception): ", line):
                kinds[line[:160]] = kinds.get(line[:160], 0) + 1
        ctx["notes"] = [
            f"Whole bench: {ctx['elapsed'] / 60:.1f} min. Publishing the bundle in-process "
            f"(`run_publish`): {publish_s:.2f} s. gunicorn log: {len(errors)} error lines"
            + (f" (first: `{errors[0][:200]}`)" if errors else "")
            + ". Exceptions in the log: "
            + ("; ".join(f"`{k}` x{v}" for k, v in kinds.items()) or "none")
            + ".",
            "",
        ]
        text = keep_analysis(render(ctx), args.report)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        print(text)
        ok = True
    finally:
        server.stop()
        if sampler.is_alive():
            sampler.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception as exc:
            print(f"closing connections: {exc}", file=sys.stderr)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"drop database if exists {DB_NAME} with (force)")
        r.flushdb()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state_root, ignore_errors=True)
        if not ok:
            print(f"failed; gunicorn log kept in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
