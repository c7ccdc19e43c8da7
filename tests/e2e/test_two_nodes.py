"""Two web nodes and two Celery workers behave like one server.

Two gunicorn processes on their own ports and data directories, and two Celery worker
processes, share one PostgreSQL database, one Redis (broker and shared state), one
object store (moto's S3 server over real HTTP) and the master key, as nodes behind a load
balancer would. Real `tinyfleet-agent run` processes talk to different nodes. Nothing
in-process stands in for the servers: gates are evaluated by the workers (nudged by the
agents' reports through Redis), and deferred telemetry is folded by them.

What must hold: a device enrolled on one node is known to the other; an ETag from one
node is current on the other (304); a rollout created on node B installs on agents of
both nodes and is promoted by the workers; either node's /metrics shows the same
fleet-wide counts, including the MQTT wake-ups node B published (Redis counters).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compression.models import ModelVersion
from fleet.models import Device, DeviceDay, Rollout
from tests.compression.helpers import upload
from tests.conftest import ROOT, database_url_for_worker, start_worker, stop_worker, wait_for
from tests.e2e.agent_helpers import Agent, _derive, _free_port, _publish, _text_model_zip
from tests.services import mqtt_url

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.services("postgres", "redis"),  # nodes share state through them
]


class Node:
    """One web node: gunicorn with its own port and data dir, everything else shared."""

    def __init__(self, name: str, tmp: Path, env: dict[str, str]) -> None:
        self.name, self.port = name, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = tmp / name
        data.mkdir()
        self.log_path = tmp / f"{name}.log"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "tinyfleet.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--worker-class",
                "gthread",
                "--workers",
                "1",
                "--threads",
                "4",
            ],
            cwd=ROOT,
            env={**os.environ, **env, "TINYFLEET_DATA_DIR": str(data)},
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: self.request("GET", "/healthz")[0] == 200, timeout=60, interval=0.3)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data else {}
        try:
            conn.request(method, path, data, {**sent, **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        except OSError:
            return 0, {}, b""
        finally:
            conn.close()

    def api(self, token: str, method: str, path: str, body: Any = None) -> Any:
        status, _, content = self.request(method, path, body, {"Authorization": f"Bearer {token}"})
        assert 200 <= status < 300, (self.name, path, status, content[:500])
        return json.loads(content)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def shared_env(
    s3_settings: dict[str, str],
    settings: Any,
) -> dict[str, str]:
    """What every node and worker shares (and this process, which publishes)."""
    master = secrets.token_hex(32)
    settings.MASTER_KEY = master
    settings.DEVICE_POLL_INTERVAL = 1
    broker = os.environ["CELERY_BROKER_URL"]  # Redis: the `services` marker sees to it
    return {
        **s3_settings,
        "DATABASE_URL": database_url_for_worker(),
        "CELERY_BROKER_URL": broker,
        "TINYFLEET_MASTER_KEY": master,
        "TINYFLEET_DEVICE_POLL_INTERVAL": "1",
        "TINYFLEET_TELEMETRY_FOLD": "deferred",
        "TINYFLEET_MQTT_URL": mqtt_url(),  # CI: the machine's Mosquitto, else a private one
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'agent'}",
        "LOG_LEVEL": "WARNING",
    }


@pytest.fixture
def cluster(shared_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    from fleet import shared_state

    client = shared_state.client()
    client.delete(shared_state.PREFIX + "mqtt_wakeups", shared_state.PREFIX + "nudge")
    queue = f"tinyfleet-two-nodes-{secrets.token_hex(4)}"
    workers = [start_worker(tmp_path, extra_env=shared_env, queue=queue) for _ in range(2)]
    env = {**shared_env, "CELERY_TASK_DEFAULT_QUEUE": queue}
    nodes: list[Node] = []
    agents = [Agent(f"agent-{i}", tmp_path / f"agent-{i}") for i in range(2)]
    try:
        nodes = [Node(f"node-{n}", tmp_path, env) for n in "ab"]
        yield {"nodes": nodes, "workers": workers, "agents": agents}
    finally:
        for agent in agents:
            agent.stop()
        for node in nodes:
            node.stop()
        for worker in workers:
            stop_worker(worker)


def _metric(text: str, name: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(name)]
    assert lines, (name, text[:2000])
    return lines[0].rsplit(" ", 1)[1]


def test_two_nodes_and_two_workers_behave_like_one(
    cluster: dict[str, Any], alice_api: Any, tmp_path: Path
) -> None:
    node_a, node_b = cluster["nodes"]
    agents: list[Agent] = cluster["agents"]
    token = alice_api.token
    # A model goes through the workers (inspection, int8 export) and is published.
    uploaded = upload(alice_api, _text_model_zip(tmp_path), name="tiny-embedder")
    assert uploaded.status_code == 201, uploaded.content
    wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
    bundle = _publish(_derive(alice_api, uploaded.json()["id"], "onnx-int8-dynamic"))

    # The group and token are made on node A; one agent enrolls on each node.
    group = node_a.api(token, "POST", "/api/v1/groups", {"name": "lab", "selector": "site=lab"})
    enroll = node_a.api(
        token, "POST", "/api/v1/enrollment-tokens", {"group": group["id"], "max_uses": len(agents)}
    )
    for agent, node in zip(agents, (node_a, node_b), strict=True):
        agent.cli("enroll", "--server", node.url, "--token", enroll["token"], "--label", "site=lab")
        agent.start()
    devices = node_b.api(token, "GET", "/api/v1/devices")
    assert devices["count"] == 2  # node B lists the device node A enrolled, and vice versa

    # An ETag node A gave is current on node B.
    credential = (agents[0].state_dir / "credential").read_text().strip()
    auth = {"Authorization": f"Bearer {credential}"}
    status, headers, _ = node_a.request("GET", "/api/device/v1/state", headers=auth)
    assert status == 200
    again = node_b.request(
        "GET", "/api/device/v1/state", headers={**auth, "If-None-Match": headers["ETag"]}
    )
    assert again[0] == 304 and again[1]["ETag"] == headers["ETag"]

    # A rollout made on node B installs on both nodes' agents; the workers promote it.
    rollout = node_b.api(
        token,
        "POST",
        "/api/v1/rollouts",
        {
            "bundle": bundle,
            "group": group["id"],
            "waves": [100],
            "soak_seconds": 0,
            "gates": {"min_devices_reporting": 2},
        },
    )
    try:
        wait_for(lambda: all(a.serving() == bundle for a in agents), timeout=120, interval=0.5)
        done = wait_for(
            lambda: (r := Rollout.objects.get(pk=rollout["id"])).status != "running" and r,
            timeout=120,
            interval=0.5,
        )
    except AssertionError:
        logs = [a.log() for a in agents] + [n.log() for n in (node_a, node_b)]
        logs += [w.log()[-3000:] for w in cluster["workers"]]
        raise AssertionError("\n\n".join(logs)) from None
    assert done.status == "succeeded", (done.reason, done.last_evaluation)
    # Both agents' telemetry, sent to different nodes, was folded into the same rollups.
    wait_for(lambda: DeviceDay.objects.filter(bundle=bundle).count() == 2, timeout=60)
    assert Device.objects.count() == 2

    # Either node's /metrics tells the same fleet-wide story, MQTT wake-ups included
    # (published by node B's process when it applied the wave).
    texts = []
    for node in (node_a, node_b):
        status, _, content = node.request(
            "GET", "/metrics", headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 200
        texts.append(content.decode())
    published = [_metric(t, 'tinyfleet_mqtt_wakeups_total{result="published"}') for t in texts]
    assert published[0] == published[1] and int(published[0]) >= 2, texts[0][-1500:]
    assert "(all processes)" in texts[0] and "(all processes)" in texts[1]
