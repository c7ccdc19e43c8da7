"""The server under test: gunicorn, its CPU and memory."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _server import Gunicorn

from .common import DB_NAME, PG_ADMIN, RSS_SAMPLE_S


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
