"""The agent's MQTT wake-ups against a real Mosquitto (no Django): the configured one
(TINYFLEET_TEST_MQTT_URL, as in CI), else a private one started for the run.

A wake-up is a hint: whatever arrives on the device's topic at most makes the update
loop poll sooner; polling goes on regardless, and nothing here can crash the agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from tinyfleet_agent._internal.updater import MIN_WAKE_GAP_S, Updater
from tinyfleet_agent._internal.wakeup import (
    MAX_WAKEUP_BYTES,
    WakeupListener,
    paho_available,
    parse_endpoint,
)
from tinyfleet_agent.config import ConfigError, load_config

from tests.services import mqtt_address, mqtt_url

ROOT = Path(__file__).resolve().parents[2]
BROKER = mqtt_url()  # the configured broker (CI) or a private one


def _publish(topic: str, payload: bytes, qos: int = 1) -> None:
    """Publish as anyone on the broker could (this is how a forger would do it)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"f-{uuid.uuid4().hex}")
    client.connect(*mqtt_address())
    client.loop_start()
    client.publish(topic, payload, qos=qos).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


class Woken:
    """Counts wake-ups; `wait()` for the next one."""

    def __init__(self) -> None:
        self.count, self.event, self.statuses = 0, threading.Event(), []

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self, timeout: float) -> bool:
        hit = self.event.wait(timeout)
        self.event.clear()
        return hit


@pytest.fixture
def device_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def listener(device_id: str) -> Iterator[tuple[WakeupListener, Woken]]:
    woken = Woken()
    subscribed = threading.Event()

    def on_status(status: str) -> None:
        woken.statuses.append(status)
        if status == "mqtt-subscribed":
            subscribed.set()

    listener = WakeupListener(device_id, woken, on_status=on_status)
    listener.follow({"url": BROKER, "topic": f"tinyfleet/devices/{device_id}"})
    assert subscribed.wait(10), f"is Mosquitto running at {BROKER}?"
    yield listener, woken
    listener.stop()


def test_it_wakes_on_any_message_on_its_topic_even_garbage(
    listener: tuple[WakeupListener, Woken], device_id: str
) -> None:
    _, woken = listener
    topic = f"tinyfleet/devices/{device_id}"
    _publish(topic, json.dumps({"v": 1, "poll": True}).encode())
    assert woken.wait(10)
    _publish(topic, b"\xff\x00not json at all")  # forged or garbled: still only a hint
    assert woken.wait(10)
    assert woken.count == 2


def test_it_ignores_oversized_messages_and_other_devices_topics(
    listener: tuple[WakeupListener, Woken], device_id: str
) -> None:
    _, woken = listener
    _publish(f"tinyfleet/devices/{device_id}", b"x" * (MAX_WAKEUP_BYTES + 1))
    _publish(f"tinyfleet/devices/{uuid.uuid4()}", b"{}")
    assert not woken.wait(1.5)
    _publish(f"tinyfleet/devices/{device_id}", b"{}")  # and it is still listening
    assert woken.wait(10) and woken.count == 1


def test_it_gets_wakeups_sent_while_it_was_briefly_away(device_id: str) -> None:
    topic = f"tinyfleet/devices/{device_id}"
    first = Woken()
    subscribed = threading.Event()
    away = WakeupListener(
        device_id, first, on_status=lambda s: s == "mqtt-subscribed" and subscribed.set()
    )
    away.follow({"url": BROKER, "topic": topic})
    assert subscribed.wait(10)
    away.stop()  # the device drops off; its persistent session stays on the broker
    _publish(topic, b'{"v":1}')
    back = Woken()
    returned = WakeupListener(device_id, back)
    returned.follow({"url": BROKER, "topic": topic})
    try:
        assert back.wait(10), "the queued QoS 1 wake-up was not delivered on reconnect"
    finally:
        returned.stop()
        # Leave no session behind on the shared broker.
        cleaner = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tinyfleet-{device_id}", clean_session=True
        )
        cleaner.connect(*mqtt_address())
        cleaner.disconnect()


def test_it_stops_when_the_server_stops_announcing_and_refuses_bad_announcements(
    listener: tuple[WakeupListener, Woken], device_id: str
) -> None:
    sub, woken = listener
    sub.follow(None)
    assert sub.endpoint is None
    _publish(f"tinyfleet/devices/{device_id}", b"{}")
    assert not woken.wait(1.0)
    for bad in (
        {"url": "http://broker", "topic": "t"},
        {"url": BROKER, "topic": "tinyfleet/devices/#"},
        {"url": BROKER},
        "mqtt://broker",
    ):
        with pytest.raises(ValueError, match="mqtt"):
            parse_endpoint(bad)
        sub.follow(bad)  # logged and ignored: polling carries on
        assert sub.endpoint is None


def _updater(tmp_path: Path) -> Updater:
    # _sleep touches only `wake`; the other collaborators are never called here.
    return Updater(
        client=None,  # type: ignore[arg-type]
        keys=None,  # type: ignore[arg-type]
        device_id="d",
        store=None,  # type: ignore[arg-type]
        state_dir=tmp_path,
    )


def test_it_cuts_the_poll_sleep_short_when_woken_and_debounces_floods(tmp_path: Path) -> None:
    updater, stop = _updater(tmp_path), threading.Event()
    polls: list[float] = []

    def loop() -> None:
        while not stop.is_set():
            polls.append(time.monotonic())
            updater._sleep(stop, 300.0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.2)
    start = time.monotonic()
    for _ in range(200):  # a flood of wake-ups over ~2 s
        updater.wake.set()
        time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    thread.join(5)
    assert not thread.is_alive(), "stop must end the sleep promptly"
    woken_polls = [t for t in polls if t >= start]
    assert 1 <= len(woken_polls) <= 2.5 / MIN_WAKE_GAP_S + 1, woken_polls


def test_mqtt_settings_are_validated(tmp_path: Path) -> None:
    config = load_config(
        {"state_dir": tmp_path}, env={"TINYFLEET_AGENT_MQTT": "ON", "TINYFLEET_AGENT_MQTT_URL": ""}
    )
    assert config.mqtt == "on" and config.mqtt_url is None
    with pytest.raises(ConfigError, match="mqtt must be auto, on or off"):
        load_config({"state_dir": tmp_path}, env={"TINYFLEET_AGENT_MQTT": "sometimes"})
    with pytest.raises(ConfigError, match="mqtt_url"):
        load_config({"state_dir": tmp_path}, env={"TINYFLEET_AGENT_MQTT_URL": "tcp://b:1883"})


def _run_without_paho(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    # A `paho` package with no `mqtt` in it shadows the real one: paho-mqtt is "missing".
    shadow = tmp_path / "shadow"
    (shadow / "paho").mkdir(parents=True)
    (shadow / "paho" / "__init__.py").write_text("")
    state = tmp_path / "state"
    state.mkdir()
    (state / "device.json").write_text("{}")
    env: dict[str, Any] = {
        **os.environ,
        "PYTHONPATH": f"{shadow}{os.pathsep}{ROOT / 'agent'}",
        "TINYFLEET_AGENT_MQTT": mode,
    }
    return subprocess.run(
        [sys.executable, "-m", "tinyfleet_agent.cli", "--state-dir", str(state), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_mqtt_on_without_paho_with_the_install_command(tmp_path: Path) -> None:
    assert paho_available()  # here it is installed; the subprocess hides it
    result = _run_without_paho(tmp_path, "on")
    assert result.returncode == 2, result.stderr
    assert "paho-mqtt is not installed" in result.stderr
    assert "pip install 'tinyfleet-agent[mqtt]'" in result.stderr
