"""MQTT wake-ups from the server, against a real Mosquitto (the configured one, else a private one).

Transactional tests: wake-ups are sent only after a real commit. A paho subscriber in the
test sees exactly what a device subscribed to its topic would see.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from core.env import env_mqtt_url, without_credentials
from fleet.devices import push
from fleet.models import Bundle, Group
from fleet.rollouts import engine as rollouts
from fleet.security import director
from tests.conftest import wait_for
from tests.fleet.device_helpers import FakeDevice
from tests.fleet.publish_helpers import (
    TestDevice,
    make_device,
    make_version,
    onnx_files,
    publish_now,
)
from tests.services import mqtt_address, mqtt_url

pytestmark = pytest.mark.django_db(transaction=True)

BROKER = mqtt_url()  # the configured broker (CI) or a private one


@dataclass
class Subscriber:
    """A paho client on tinyfleet/devices/# that records every message it gets."""

    client: mqtt.Client
    messages: list[mqtt.MQTTMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_devices(self, devices: list[TestDevice]) -> list[mqtt.MQTTMessage]:
        # Other test runs may share the broker: only our devices' topics count.
        topics = {push.topic_for(d.id) for d in devices}
        with self.lock:
            return [m for m in self.messages if m.topic in topics]


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
    watcher = Subscriber(client)
    subscribed = threading.Event()

    def on_message(c: Any, u: Any, message: mqtt.MQTTMessage) -> None:
        with watcher.lock:
            watcher.messages.append(message)

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("tinyfleet/devices/#", qos=1)
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    client.connect(*mqtt_address())
    client.loop_start()
    assert subscribed.wait(10), f"is Mosquitto running at {BROKER}?"
    yield watcher
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def mqtt_on(settings: Any) -> None:
    settings.MQTT_URL = settings.MQTT_DEVICE_URL = BROKER


@pytest.fixture
def group_of_four(db: None) -> tuple[Group, list[TestDevice]]:
    group = Group.objects.create(name="plant-3", selector="site=plant-3")
    devices = [make_device(f"pi-{i}") for i in range(4)]
    for d in devices:
        d.device.labels = {"site": "plant-3"}
        d.device.save()
    return group, devices


def _bundle(tmp_path: Path) -> Bundle:
    return publish_now(make_version(onnx_files(tmp_path)))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_it_wakes_exactly_the_devices_a_wave_assigns_after_commit(
    mqtt_on: None,
    subscriber: Subscriber,
    group_of_four: tuple[Group, list[TestDevice]],
    tmp_path: Path,
    alice: Any,
) -> None:
    group, devices = group_of_four
    bundle = _bundle(tmp_path)
    with transaction.atomic():
        rollout = rollouts.create(
            user=alice, bundle=bundle, group=group, waves=[50, 100], gates={}, soak_seconds=0
        )
        assert push.publisher().flush(10)
        time.sleep(0.5)
        assert subscriber.for_devices(devices) == []  # nothing before the commit
    woken = wait_for(lambda: subscriber.for_devices(devices), timeout=10)
    time.sleep(0.5)  # any stray extra wake-up would have arrived by now
    assigned = {str(a.device_id) for a in bundle.assignments.filter(ended_at__isnull=True)}
    assert len(assigned) == 2
    messages = subscriber.for_devices(devices)
    assert {m.topic for m in messages} == {push.topic_for(d) for d in assigned}
    assert len(messages) == len(woken) == 2
    for message in messages:
        assert json.loads(message.payload) == {"v": 1, "poll": True}  # no secrets, a hint
        assert message.retain is False and message.qos == 1

    rollouts.promote(rollout, alice)
    wait_for(lambda: len(subscriber.for_devices(devices)) == 4, timeout=10)
    assert {m.topic for m in subscriber.for_devices(devices)} == {
        push.topic_for(d.id) for d in devices
    }


def test_it_sends_a_whole_wave_over_one_connection(
    mqtt_on: None, subscriber: Subscriber, tmp_path: Path, alice: Any, monkeypatch: Any
) -> None:
    group = Group.objects.create(name="wave", selector="site=wave")
    devices = [make_device(f"w-{i}") for i in range(30)]
    for d in devices:
        d.device.labels = {"site": "wave"}
        d.device.save()
    calls: list[list[str]] = []
    real = push.publish_wakeups

    def spy(broker: push.Broker, ids: list[str]) -> int:  # records, then really publishes
        calls.append(list(ids))
        return real(broker, ids)

    monkeypatch.setattr(push, "publish_wakeups", spy)
    before = push.publisher().stats["published"]
    rollouts.create(user=alice, bundle=_bundle(tmp_path), group=group, waves=[100], gates={})
    wait_for(lambda: len(subscriber.for_devices(devices)) == 30, timeout=15)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(d.id for d in devices)
    assert push.publisher().stats["published"] - before == 30


def test_it_wakes_devices_a_rollback_or_revocation_changes(
    mqtt_on: None,
    subscriber: Subscriber,
    group_of_four: tuple[Group, list[TestDevice]],
    tmp_path: Path,
    alice: Any,
    alice_api: Any,
) -> None:
    group, devices = group_of_four
    rollout = rollouts.create(
        user=alice, bundle=_bundle(tmp_path), group=group, waves=[100], gates={}
    )
    wait_for(lambda: len(subscriber.for_devices(devices)) == 4, timeout=10)
    rollouts.rollback(rollout, alice)
    wait_for(lambda: len(subscriber.for_devices(devices)) == 8, timeout=10)

    # A revoked device (no assignment left) is woken so its next poll, now, gets a 401.
    target = devices[0]
    assert alice_api.post(f"/api/v1/devices/{target.id}/revoke").status_code == 200
    wait_for(lambda: len(subscriber.for_devices([target])) == 3, timeout=10)
    assert len(subscriber.for_devices(devices)) == 9


def test_it_publishes_nothing_when_mqtt_is_off(
    settings: Any, subscriber: Subscriber, tmp_path: Path
) -> None:
    settings.MQTT_URL = settings.MQTT_DEVICE_URL = ""
    device = make_device()
    director.assign(device.device, _bundle(tmp_path))
    assert push.publisher().flush(10)
    time.sleep(1.0)
    assert subscriber.for_devices([device]) == []
    body = device.client().get("/api/device/v1/state").json()
    assert "mqtt" not in body  # and so ETags are what they were before MQTT existed


def test_it_never_fails_a_rollout_when_the_broker_is_down(
    settings: Any,
    group_of_four: tuple[Group, list[TestDevice]],
    tmp_path: Path,
    alice_api: Any,
) -> None:
    settings.MQTT_URL = settings.MQTT_DEVICE_URL = f"mqtt://127.0.0.1:{_closed_port()}"
    group, devices = group_of_four
    bundle = _bundle(tmp_path)
    failed_before = push.publisher().stats["failed"]
    response = alice_api.post(
        "/api/v1/rollouts", {"bundle": bundle.pk, "group": group.pk, "waves": [100], "gates": {}}
    )
    assert response.status_code == 201, response.content
    assert bundle.assignments.filter(ended_at__isnull=True).count() == 4
    assert push.publisher().flush(15)
    assert push.publisher().stats["failed"] - failed_before == 4  # logged and counted
    metrics = alice_api.get("/metrics").content.decode()
    assert 'tinyfleet_mqtt_wakeups_total{result="failed"}' in metrics
    # Polling still answers with the new desired state.
    assert devices[0].client().get("/api/device/v1/state").json()["desired"]["bundle"] == bundle.pk


def test_it_tells_devices_the_broker_and_their_topic_without_credentials(
    mqtt_on: None, settings: Any, client: Any, alice_api: Any
) -> None:
    group = alice_api.post("/api/v1/groups", {"name": "lab", "selector": "site=lab"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    device = FakeDevice()
    answer = device.enroll(client, token).json()
    topic = f"tinyfleet/devices/{device.device_id}"
    assert answer["mqtt"] == {"url": BROKER, "topic": topic}
    state = device.client().get("/api/device/v1/state")
    assert state.json()["mqtt"] == {"url": BROKER, "topic": topic}
    # The fast path's ETag covers the announcement too (304 while it is unchanged).
    again = device.client().get("/api/device/v1/state", HTTP_IF_NONE_MATCH=state["ETag"])
    assert again.status_code == 304


def test_it_reads_broker_urls_strictly_and_strips_credentials_for_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("X_MQTT", "mqtts://tinyfleet:s3cret@broker.example:8883")
    url = env_mqtt_url("X_MQTT")
    assert without_credentials(url) == "mqtts://broker.example:8883"
    for bad in ("http://broker:1883", "mqtt://", "mqtt://broker:1883/topic", "mqtt://b:99999"):
        monkeypatch.setenv("X_MQTT", bad)
        with pytest.raises(ImproperlyConfigured, match="X_MQTT"):
            env_mqtt_url("X_MQTT")
