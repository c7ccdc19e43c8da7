"""Shared fixtures: users with roles, API clients, and a real Celery worker process.

Services: the suite uses whatever DATABASE_URL / CELERY_BROKER_URL / TINYFLEET_TEST_MQTT_URL
point at (CI: the machine's PostgreSQL, Redis and Mosquitto); unset, it runs on the
embedded defaults and tests that need a real server start a private one (tests/services.py).
With TINYFLEET_REQUIRE_SERVICES=1 a missing service fails the run instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Fixtures shared across test directories live in helper modules, registered here.
pytest_plugins = ["tests.fixtures.s3"]


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 3
        ):
            return True
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("TINYFLEET_REQUIRE_SERVICES") != "1":
        return
    db = os.environ.get("DATABASE_URL", "")
    broker = os.environ.get("CELERY_BROKER_URL", "")
    problems = []
    if not db.startswith("postgres") or not _reachable(db, 5432):
        problems.append(f"PostgreSQL not reachable via DATABASE_URL={db!r}")
    if not broker.startswith("redis") or not _reachable(broker, 6379):
        problems.append(f"Redis not reachable via CELERY_BROKER_URL={broker!r}")
    mqtt = os.environ.get("TINYFLEET_TEST_MQTT_URL", "")
    if not mqtt.startswith("mqtt") or not _reachable(mqtt, 1883):
        problems.append(f"Mosquitto not reachable via TINYFLEET_TEST_MQTT_URL={mqtt!r}")
    if problems:
        raise pytest.UsageError("required services missing: " + "; ".join(problems))


def _missing_services(needs: tuple[str, ...]) -> list[str]:
    """Which of `needs` this run was not given (the embedded defaults stand in)."""
    from django.conf import settings

    missing = []
    if "postgres" in needs and "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        missing.append("postgres")
    if "redis" in needs and not os.environ.get("CELERY_BROKER_URL", "").startswith("redis"):
        missing.append("redis")
    return missing


class PrivateServicesRerun(pytest.Item):
    """A test marked `services(...)` that this run cannot serve (`make test` with no
    services configured) runs again in a pytest subprocess on private servers
    (tests/services.py), instead of being skipped or failing for want of a server."""

    def __init__(self, *, original: str, needs: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.original, self.needs = original, needs

    def runtest(self) -> None:
        from tests.services import rerun_with_private_services

        rerun = rerun_with_private_services(self.original, ROOT, self.needs)
        assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-2000:]
        assert "1 passed" in rerun.stdout, rerun.stdout[-2000:]

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.name} (on private {', '.join(self.needs)})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for index, item in enumerate(items):
        marker = item.get_closest_marker("services")
        if marker is None or not _missing_services(tuple(marker.args)):
            continue
        assert item.parent is not None
        rerun = PrivateServicesRerun.from_parent(
            item.parent, name=item.name, original=item.nodeid, needs=tuple(marker.args)
        )
        rerun.own_markers = list(item.own_markers)  # slow/browser selection still applies
        items[index] = rerun


@pytest.fixture(autouse=True)
def _roomy_rate_limits(request: pytest.FixtureRequest) -> None:
    """Tests call the APIs far faster than any operator or device; the limits have their
    own tests (tests/security/test_rate_limits.py), which set them back."""
    if not request.config.pluginmanager.hasplugin("django"):
        return  # the agent's tests on an emulated board (make check-arm64): no Django there
    settings = request.getfixturevalue("settings")
    settings.API_RATE_LIMIT = settings.DEVICE_RATE_LIMIT = settings.ENROLL_RATE_LIMIT = ""


# --- users and clients -------------------------------------------------------------


def make_user(username: str, role: str) -> Any:
    from django.contrib.auth import get_user_model

    from accounts.models import Profile

    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", "pw-" + username
    )
    Profile.objects.create(user=user, role=role)
    return user


@pytest.fixture
def alice(db: None) -> Any:
    """An operator."""
    return make_user("alice", "operator")


@pytest.fixture
def bob(db: None) -> Any:
    """A viewer."""
    return make_user("bob", "viewer")


@pytest.fixture
def charlie(db: None) -> Any:
    """An admin."""
    return make_user("charlie", "admin")


class ApiClient:
    """Django test client with a bearer token."""

    def __init__(self, user: Any) -> None:
        from django.test import Client

        from accounts.models import ApiToken

        self.user = user
        _, self.token = ApiToken.issue(user, "tests")
        self.client = Client(HTTP_AUTHORIZATION=f"Bearer {self.token}")

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, **kw)

    def post(self, path: str, data: Any = None, **kw: Any) -> Any:
        if isinstance(data, dict) and not any(hasattr(v, "read") for v in data.values()):
            return self.client.post(path, data, content_type="application/json", **kw)
        return self.client.post(path, data, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.client.delete(path, **kw)


@pytest.fixture
def alice_api(alice: Any) -> ApiClient:
    return ApiClient(alice)


@pytest.fixture
def bob_api(bob: Any) -> ApiClient:
    return ApiClient(bob)


@pytest.fixture
def charlie_api(charlie: Any) -> ApiClient:
    return ApiClient(charlie)


# --- a real Celery worker ----------------------------------------------------------


def database_url_for_worker() -> str:
    from django.db import connection

    conf = connection.settings_dict
    if conf["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{conf['NAME']}"
    user = conf.get("USER") or ""
    password = f":{conf['PASSWORD']}" if conf.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    host = f"{conf.get('HOST') or '127.0.0.1'}:{conf.get('PORT') or 5432}"
    return f"postgres://{auth}{host}/{conf['NAME']}"


class Worker:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, queue: str) -> None:
        self.proc, self.log_path, self.queue = proc, log_path, queue

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    tmp: Path, extra_env: dict[str, str] | None = None, queue: str | None = None
) -> Worker:
    from tinyfleet.celery import app

    queue = queue or f"tinyfleet-test-{uuid.uuid4().hex[:8]}"
    app.conf.task_default_queue = queue
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_worker(),
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'agent'}",
        **(extra_env or {}),
    }
    log_path = tmp / f"{queue}-{uuid.uuid4().hex[:4]}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tinyfleet",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "1",
            "-Q",
            queue,
            "--loglevel",
            "INFO",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited: {log_path.read_text()}")
        if "ready." in log_path.read_text(errors="replace"):
            return Worker(proc, log_path, queue)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"celery worker did not start: {log_path.read_text()}")


def stop_worker(worker: Worker) -> None:
    worker.proc.terminate()
    try:
        worker.proc.wait(15)
    except subprocess.TimeoutExpired:
        worker.proc.kill()


@pytest.fixture
def celery_worker(transactional_db: None, tmp_path: Path) -> Iterator[Worker]:
    """A real `celery worker` process on the configured broker and the test database."""
    worker = start_worker(tmp_path)
    try:
        yield worker
    finally:
        stop_worker(worker)


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
