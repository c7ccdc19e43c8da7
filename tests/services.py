"""Services the suite needs, configured or started here.

CI points the suite at the machine's PostgreSQL, Redis and Mosquitto (DATABASE_URL,
CELERY_BROKER_URL, TINYFLEET_TEST_MQTT_URL). On a fresh machine nothing runs: a test that
needs one of them starts a private one from the Debian binaries `scripts/system-deps.sh`
installs (its own port and temp dir, stopped afterwards) instead of failing.
"""

from __future__ import annotations

import atexit
import getpass
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from urllib.parse import urlparse

MQTT_ENV = "TINYFLEET_TEST_MQTT_URL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 3
        ):
            return True
    except OSError:
        return False


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def _port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    return check


class PrivateService:
    """A server process of our own, on 127.0.0.1 and a free port."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], folder: Path) -> None:
        self.url, self.proc, self.folder = url, proc, folder

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _need(binary: str, package: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if not found:
        raise RuntimeError(f"{binary} not found: run scripts/system-deps.sh (Debian {package})")
    return found


def start_mosquitto() -> PrivateService:
    """An anonymous Mosquitto for the wake-up tests."""
    folder = Path(tempfile.mkdtemp(prefix="tinyfleet-mqtt-"))
    port = free_port()
    conf = folder / "mosquitto.conf"
    # As root, mosquitto would switch to its own user; stay who runs the tests.
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\n"
    )
    log = folder / "mosquitto.log"
    proc = subprocess.Popen(
        [_need("mosquitto", "mosquitto"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    _wait(_port_open(port), proc, "mosquitto", log)
    return PrivateService(f"mqtt://127.0.0.1:{port}", proc, folder)


def start_redis() -> PrivateService:
    folder = Path(tempfile.mkdtemp(prefix="tinyfleet-redis-"))
    port = free_port()
    log = folder / "redis.log"
    proc = subprocess.Popen(
        [
            _need("redis-server", "redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    _wait(_port_open(port), proc, "redis-server", log)
    return PrivateService(f"redis://127.0.0.1:{port}/0", proc, folder)


def postgres_bin(name: str) -> str:
    """Debian keeps initdb/pg_ctl/postgres under /usr/lib/postgresql/<version>/bin."""
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    return _need(name, "postgresql")


def start_postgres() -> PrivateService:
    """A throwaway cluster (trust auth, user postgres) in a temp dir.

    PostgreSQL refuses to run as root; as root we run it as the `postgres` user the
    Debian package creates.
    """
    folder = Path(tempfile.mkdtemp(prefix="tinyfleet-pg-"))
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    subprocess.run(
        [
            *as_user,
            postgres_bin("initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    log = folder / "postgres.log"
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_user, postgres_bin("pg_ctl"), "-D", str(data), "-l", str(log)]
    # -w: returns once the server accepts connections.
    subprocess.run(
        [*pg_ctl, "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True
    )
    return PostgresService(f"postgres://postgres@127.0.0.1:{port}/tinyfleet", pg_ctl, folder)


class PostgresService(PrivateService):
    def __init__(self, url: str, pg_ctl: list[str], folder: Path) -> None:
        self.url, self.pg_ctl, self.folder = url, pg_ctl, folder

    def stop(self) -> None:
        subprocess.run([*self.pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


_private: dict[str, PrivateService] = {}


def _shared(name: str, start: Callable[[], PrivateService]) -> str:
    """One private server of a kind per test process, stopped when the process exits."""
    if name not in _private:
        _private[name] = start()
        atexit.register(_private[name].stop)
    return _private[name].url


def mqtt_url() -> str:
    """The configured broker (CI: the machine's Mosquitto), else a private one."""
    return os.environ.get(MQTT_ENV) or _shared("mosquitto", start_mosquitto)


def mqtt_address() -> tuple[str, int]:
    parsed = urlparse(mqtt_url())
    return parsed.hostname or "127.0.0.1", parsed.port or 1883


def redis_url() -> str:
    """The configured Redis broker (CI), else a private redis-server."""
    configured = os.environ.get("CELERY_BROKER_URL", "")
    return configured if configured.startswith("redis") else _shared("redis", start_redis)


def rerun_with_private_services(
    nodeid: str, root: Path, needs: Collection[str] = ("postgres",)
) -> subprocess.CompletedProcess[str]:
    """Run one test again in a pytest subprocess on a private PostgreSQL (always: its test
    database must not meet this process's), and Redis when `needs` names it (the
    configured one, else a private one), for tests of behaviour the embedded defaults do
    not have (tests/conftest.py, marker `services`)."""
    data_dir = tempfile.mkdtemp(prefix="tinyfleet-rerun-data-")
    env = {
        **os.environ,
        "DATABASE_URL": _shared("postgres", start_postgres),
        "TINYFLEET_DATA_DIR": data_dir,
    }
    if "redis" in needs:
        env["CELERY_BROKER_URL"] = redis_url()
    env.pop("TINYFLEET_REQUIRE_SERVICES", None)
    try:
        return subprocess.run(
            [sys.executable, "-m", "pytest", nodeid, "-q", "-p", "no:cacheprovider"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
