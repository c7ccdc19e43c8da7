"""End to end: MQTT wake-ups make a real agent act at once despite a 300 s poll interval.

A live server, a real Celery worker (the compression job), a real Mosquitto (the
configured one, else a private one) and a real `tinyfleet-agent run` process with
`mqtt = "on"`. With polls
5 minutes apart (jittered to at least 240 s), only the wake-up can explain the agent
installing the rollout's bundle, or learning it was revoked, within seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from compression.models import ModelVersion
from fleet.devices import push
from fleet.models import Device
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import Agent, _derive, _publish, _text_model_zip
from tests.services import mqtt_address, mqtt_url

pytestmark = [pytest.mark.django_db(transaction=True)]

BROKER = mqtt_url()  # the configured broker (CI) or a private one
POLL_INTERVAL = 300


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    one = Agent("mqtt-agent", tmp_path / "mqtt-agent")
    one.env["TINYFLEET_AGENT_MQTT"] = "on"
    yield one
    one.stop()


def _forge(topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"f-{uuid.uuid4().hex}")
    client.connect(*mqtt_address())
    client.loop_start()
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def _health(agent: Agent) -> dict[str, Any]:
    try:
        return dict(agent.get("/v1/health"))
    except (OSError, ValueError):
        return {}


def test_a_woken_agent_installs_at_once_and_shrugs_off_forged_wakeups(
    live_server: Any,
    celery_worker: Worker,
    alice_api: Any,
    agent: Agent,
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.DEVICE_POLL_INTERVAL = POLL_INTERVAL
    settings.SITE_URL = live_server.url
    settings.MQTT_URL = settings.MQTT_DEVICE_URL = BROKER
    uploaded = upload(alice_api, _text_model_zip(tmp_path), name="tiny-embedder")
    assert uploaded.status_code == 201, uploaded.content
    wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
    bundle = _publish(_derive(alice_api, uploaded.json()["id"], "onnx-int8-dynamic"))

    group = alice_api.post("/api/v1/groups", {"name": "lab", "selector": "site=lab"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    enrolled = agent.cli(
        "enroll", "--server", live_server.url, "--token", token, "--label", "site=lab"
    )
    device_id = json.loads(enrolled.stdout)["device_id"]
    agent.start()
    # Its first poll (at start) carries the broker and topic; then it subscribes.
    wait_for(lambda: _health(agent).get("push") == "mqtt-subscribed", timeout=30)

    failed_before = push.publisher().stats["failed"]  # the publisher is per process
    started = time.monotonic()
    rollout = alice_api.post(
        "/api/v1/rollouts",
        {"bundle": bundle, "group": group["id"], "waves": [100], "soak_seconds": 0},
    )
    assert rollout.status_code == 201, rollout.content
    try:
        # 60 s is far below the earliest next poll (0.8 x 300 s): only a wake-up fits.
        wait_for(lambda: agent.serving() == bundle, timeout=60, interval=0.2)
    except AssertionError:
        raise AssertionError(agent.log()) from None
    print(f"rollout start -> installed and serving: {time.monotonic() - started:.2f} s")
    assert push.publisher().stats["failed"] == failed_before

    # Forged and garbage messages on its topic: at most a poll each, never a crash.
    topic = f"tinyfleet/devices/{device_id}"
    for payload in (b"\x00\xff garbage", b"{not json", b"x" * 5000, b'{"v": 99, "bundle": "evil"}'):
        _forge(topic, payload)
    time.sleep(3)
    assert agent.proc is not None and agent.proc.poll() is None, agent.log()
    assert agent.serving() == bundle
    health = _health(agent)
    assert health.get("push") == "mqtt-subscribed" and health.get("update") == "idle", health

    # It still listens: revoking the device wakes it, and its poll learns of it now.
    assert alice_api.post(f"/api/v1/devices/{device_id}/revoke").status_code == 200
    wait_for(lambda: _health(agent).get("update") == "revoked", timeout=30)
    assert agent.serving() == bundle  # a revoked device keeps serving what it has
    assert Device.objects.get(pk=device_id).revoked_at is not None
