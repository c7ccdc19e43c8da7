"""`make run`: migrate, create the first admin, then run web + Celery worker + beat in the
foreground. Ctrl-C (or SIGTERM) stops all three; if one dies, the others are stopped too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, check=True)


def process_commands(host: str, port: str, data_dir: str) -> dict[str, list[str]]:
    """The three processes of a deployment (the production-like e2e test runs these)."""
    return {
        "web": [
            str(BIN / "gunicorn"),
            "tinyfleet.wsgi:application",
            "--bind",
            f"{host}:{port}",
            "--worker-class",
            "gthread",
            "--workers",
            os.environ.get("WEB_CONCURRENCY", "2"),
            "--threads",
            "4",
            "--timeout",
            "600",
            "--access-logfile",
            "-",
        ],
        "worker": [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tinyfleet",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            os.environ.get("WORKER_CONCURRENCY", "1"),
        ],
        "beat": [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tinyfleet",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(Path(data_dir) / "celerybeat-schedule"),
        ],
    }


# glibc otherwise returns each ~1 MiB request-body buffer to the kernel and faults in
# fresh pages for the next one: about 1 M page faults per GiB uploaded (bench/upload.py).
WEB_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"}


def _env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    if name == "web":
        for key, value in WEB_MALLOC.items():
            env.setdefault(key, value)
    return env


def main() -> int:
    port = os.environ.get("PORT", "8000")
    # Loopback unless told otherwise: BIND_HOST=0.0.0.0 exposes the server to the network.
    host = os.environ.get("BIND_HOST", "127.0.0.1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tinyfleet.settings")
    from django.conf import settings

    data_dir = str(settings.DATA_DIR)
    _manage("migrate", "--no-input", "-v", "0")
    _manage("ensure_admin")
    procs = {
        name: subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, env=_env(name))
        for name, cmd in process_commands(host, port, data_dir).items()
    }
    print(
        f"\ntinyfleet is running at http://{host}:{port}/  (data in {data_dir}; Ctrl-C stops)\n",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping everything", flush=True)
                exit_code, stopping = proc.returncode or 1, True
                break
        time.sleep(0.5)
    for proc in procs.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
