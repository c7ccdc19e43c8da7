"""A production-like run without Docker: every piece is its own process, talking over the
network like docker-compose's services would.

- gunicorn, a Celery worker and Celery beat, started with the commands `make run` uses
  (tinyfleet.supervise), configured only through the environment;
- PostgreSQL (a fresh database on the configured server in CI, else a private cluster),
  Redis (the configured broker in CI, else a private redis-server), Mosquitto (likewise);
- S3: moto's server as the internal endpoint, behind `DoubleAuthProxy` (the AWS rule moto
  lacks) as the public endpoint devices download from;
- two real `tinyfleet-agent run` processes.

The journey: upload -> inspection -> int8 job -> publish -> rollout in two waves (beat and
device-report nudges move it, nothing is called in-process) -> both agents serving ->
predictions -> their telemetry on the operator's monitor page.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from tests.conftest import ROOT, wait_for
from tests.e2e.agent_helpers import Agent, _text_model_zip
from tests.e2e.s3 import DoubleAuthProxy, MotoServer, s3_environment
from tests.services import free_port, mqtt_url, redis_url, start_postgres
from tinyfleet.supervise import process_commands

pytestmark = [pytest.mark.slow]
BUCKET = "tinyfleet-prod"
OPERATOR, PASSWORD = "ops", "ops-" + secrets.token_hex(8)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database: on the configured PostgreSQL (CI), else on a private cluster."""
    configured = os.environ.get("DATABASE_URL", "")
    server = None
    if not configured.startswith("postgres"):
        server = start_postgres()
        configured = server.url
    name = f"tinyfleet_stack_{uuid.uuid4().hex[:8]}"
    admin = urlunsplit(urlsplit(configured)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(configured)._replace(path=f"/{name}"))
    finally:
        if server is not None:
            server.stop()
        else:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def object_store() -> Iterator[tuple[MotoServer, DoubleAuthProxy]]:
    moto = MotoServer()
    moto.create_bucket(BUCKET)
    proxy = DoubleAuthProxy(moto.url)
    yield moto, proxy
    proxy.stop()
    moto.stop()


class Stack:
    """gunicorn + Celery worker + beat on one environment, like a deployment."""

    def __init__(self, tmp: Path, database: str, public_s3: str, internal_s3: str) -> None:
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data_dir = tmp / "server-data"
        data_dir.mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TINYFLEET_", "CELERY"))},
            "DATABASE_URL": database,
            "CELERY_BROKER_URL": redis_url(),
            # Its own queue: CI's shared Redis may serve other tests' workers meanwhile.
            "CELERY_TASK_DEFAULT_QUEUE": f"tinyfleet-stack-{uuid.uuid4().hex[:8]}",
            "TINYFLEET_DATA_DIR": str(data_dir),
            "TINYFLEET_MASTER_KEY": secrets.token_hex(32),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "TINYFLEET_MQTT_URL": mqtt_url(),
            "TINYFLEET_DEVICE_POLL_INTERVAL": "2",
            "TINYFLEET_PUBLIC_URL": self.url,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'agent'}",
            **s3_environment(BUCKET, internal_s3, public_s3),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self) -> None:
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage("create_user", OPERATOR, "--role", "operator", "--password", PASSWORD)
        self.token = self.manage("create_api_token", OPERATOR).strip().split()[-1]
        commands = process_commands("127.0.0.1", str(self.port), self.env["TINYFLEET_DATA_DIR"])
        for name, command in commands.items():
            if name == "web":  # make run's defaults, scaled down for a shared test machine
                command = [*command, "--workers", "1"]
            log = (self.tmp / f"{name}.log").open("wb")
            self.procs[name] = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, timeout=60, interval=0.5)

    def _healthy(self) -> bool:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited: {self.log(name)}"
        try:
            answer = requests.get(f"{self.url}/healthz", timeout=30)
        except requests.RequestException:
            return False
        assert answer.status_code == 200, answer.text
        return True

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers, **kwargs)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def logs(self) -> str:
        return "\n".join(f"== {name}\n{self.log(name)}" for name in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _until(stack: Stack, check: Any, timeout: float, what: str, agents: list[Agent]) -> Any:
    try:
        return wait_for(check, timeout=timeout, interval=1.0)
    except AssertionError:
        agent_logs = "\n".join(a.log() for a in agents)
        raise AssertionError(f"{what}\n{stack.logs()}\n{agent_logs}") from None


def _monitor_rows(session: requests.Session, url: str) -> list[tuple[int, int]]:
    """(devices, requests) per row (one per chart bucket) of the monitor page's table."""
    page = session.get(url, timeout=30).text
    table = page.split('data-testid="monitor-table"', 1)[-1].split("</table>", 1)[0]
    return [
        (int(devices), int(count))
        for devices, count in re.findall(
            r"<tr><td>(?:<time[^>]*>)?[^<]*(?:</time>)?</td><td>(\d+)</td><td>(\d+)</td>", table
        )
    ]


def _push_status(agent: Agent) -> str | None:
    try:
        return str(agent.get("/v1/health").get("push"))
    except (OSError, ValueError):
        return None  # not listening yet


def _login(stack: Stack) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{stack.url}/login/", timeout=30).text
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert csrf, form[:300]
    done = session.post(
        f"{stack.url}/login/",
        data={"username": OPERATOR, "password": PASSWORD, "csrfmiddlewaretoken": csrf.group(1)},
        headers={"Referer": f"{stack.url}/login/"},
        timeout=30,
    )
    assert done.status_code == 200 and "Log in" not in done.text.split("<main>", 1)[-1][:400]
    return session


def test_the_whole_journey_on_a_production_like_stack(
    tmp_path: Path,
    postgres_url: str,
    object_store: tuple[MotoServer, DoubleAuthProxy],
) -> None:
    moto, proxy = object_store
    stack = Stack(tmp_path, postgres_url, proxy.url, moto.url)
    agents = [Agent(f"device-{i}", tmp_path / f"device-{i}") for i in range(2)]
    try:
        stack.start()
        with _text_model_zip(tmp_path).open("rb") as handle:
            uploaded = stack.api(
                "POST",
                "/models",
                data={"name": "tiny-embedder", "task": "text-embedding"},
                files={"file": ("tiny-embedder.zip", handle)},
            )
        assert uploaded.status_code == 201, uploaded.text
        version_id = uploaded.json()["id"]
        _until(
            stack,
            lambda: stack.api("GET", f"/versions/{version_id}").json()["status"] == "ready",
            120,
            "inspection",
            agents,
        )
        job = stack.api(
            "POST", "/jobs", json={"version": version_id, "recipe": "onnx-int8-dynamic"}
        ).json()
        done = _until(
            stack,
            lambda: (
                (j := stack.api("GET", f"/jobs/{job['id']}").json())["status"]
                in ("succeeded", "failed")
                and j
            ),
            240,
            "int8 job",
            agents,
        )
        assert done["status"] == "succeeded", done
        bundle = stack.api("POST", "/bundles", json={"version": done["result_version"]}).json()
        _until(
            stack,
            lambda: stack.api("GET", f"/bundles/{bundle['id']}").json()["status"] == "published",
            120,
            "publish",
            agents,
        )
        # The artifacts live in S3, not on the server's disk.
        stored = moto.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
        assert any(o["Key"].startswith("bundles/") for o in stored), stored

        group = stack.api("POST", "/groups", json={"name": "lab", "selector": "site=lab"}).json()
        token = stack.api(
            "POST", "/enrollment-tokens", json={"group": group["id"], "max_uses": len(agents)}
        ).json()
        for agent in agents:
            agent.cli(
                "enroll", "--server", stack.url, "--token", token["token"], "--label", "site=lab"
            )
            agent.start()
        # Each agent learns the broker from its first poll and subscribes to its topic.
        _until(
            stack,
            lambda: all(_push_status(a) == "mqtt-subscribed" for a in agents),
            60,
            "agents subscribed to Mosquitto",
            agents,
        )
        rollout = stack.api(
            "POST",
            "/rollouts",
            json={
                "bundle": bundle["id"],
                "group": group["id"],
                "waves": [50, 100],
                "soak_seconds": 0,
            },
        )
        assert rollout.status_code == 201, rollout.text
        rollout_id = rollout.json()["id"]
        # Nothing in this process moves the rollout: beat and device-report nudges run the
        # gates in the worker, and each wave passes once its devices' evidence is in.
        final = _until(
            stack,
            lambda: (
                (r := stack.api("GET", f"/rollouts/{rollout_id}").json())["status"] != "running"
                and r
            ),
            240,
            "the rollout finishing",
            agents,
        )
        assert final["status"] == "succeeded", final
        actions = [e["action"] for e in final["events"]]
        assert "promote" in actions and "succeed" in actions, actions
        _until(
            stack,
            lambda: all(a.serving() == bundle["id"] for a in agents),
            120,
            "both agents serving",
            agents,
        )
        for agent in agents:
            for text in ("the pump is vibrating", "all good", "check the valve"):
                answer = agent.post("/v1/predict", {"inputs": [text]})
                assert answer["bundle"] == bundle["id"]

        session = _login(stack)
        monitor = f"{stack.url}/bundles/{bundle['id']}/monitor/"
        rows = _until(
            stack,
            lambda: [r for r in _monitor_rows(session, monitor) if r[0] == 2 and r[1] >= 6],
            90,
            "telemetry on the monitor page",
            agents,
        )
        assert rows
    finally:
        for agent in agents:
            agent.stop()
        stack.stop()
    presigned = [s for s in proxy.seen if s.presigned]
    assert presigned and all(s.authorization is None and s.status < 400 for s in presigned)
