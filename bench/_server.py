"""A real gunicorn serving tinyfleet for the benches: started on a free port with its own
data dir and environment, polled until healthy, stopped with SIGTERM (SIGKILL after 30 s).

The benches measure the server as `make run` runs it, so this starts the same WSGI app
with the gthread worker class; each bench picks its worker and thread counts.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gunicorn:
    data_dir: Path
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    workers: int = 1
    threads: int = 4
    proc: subprocess.Popen[bytes] | None = None
    app: str = "tinyfleet.wsgi:application"

    @property
    def env(self) -> dict[str, str]:
        # The bench chooses its own database and broker; never inherit the caller's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_"))}
        env.pop("TINYFLEET_S3_BUCKET", None)
        env.update(
            TINYFLEET_DATA_DIR=str(self.data_dir),
            DJANGO_SETTINGS_MODULE="tinyfleet.settings",
            LOG_LEVEL="WARNING",
        )
        env.update(self.extra_env)
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def start(self, workers: int | None = None, timeout_s: float = 90) -> None:
        if workers is not None:
            self.workers = workers
        cmd = [
            str(BIN / "gunicorn"),
            self.app,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--worker-class",
            "gthread",
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--timeout",
            "600",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.log}")
            try:
                status, _ = self.request_json("GET", "/healthz")
                if status == 200 and len(self.worker_pids()) == self.workers:
                    # Let every worker import the app before anything is timed.
                    for _ in range(4 * self.workers):
                        self.request_json("GET", "/healthz")
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not become healthy in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def request_json(
        self, method: str, path: str, body: Any = None, token: str = "", timeout: float = 60
    ) -> tuple[int, Any]:
        """One request on a fresh connection; `body` (if any) is sent as JSON, or as is
        when it is already bytes."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data: bytes | None = None
        if isinstance(body, bytes):
            data = body
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(raw) if raw else None
