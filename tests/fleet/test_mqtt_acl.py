"""The Mosquitto ACL that docs/security.md recommends, run for real.

A private `mosquitto` process (its own port, password file from `mosquitto_passwd`, and
the ACL block copied verbatim from the docs) checks what the docs promise: the server
account publishes wake-ups, each device reads only its own topic (with the agent's real
listener and a per-device password file) and can neither read another device's topic
nor wake it.
"""

from __future__ import annotations

import getpass
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from tinyfleet_agent._internal.wakeup import MqttOptions, WakeupListener

from fleet.devices import push
from tests.conftest import ROOT, wait_for

SERVER_USER, SERVER_PASSWORD = "tinyfleet-server", "server-" + uuid.uuid4().hex


def _documented_acl() -> str:
    text = (ROOT / "docs" / "security.md").read_text()
    match = re.search(r"```conf\n# /etc/mosquitto/tinyfleet\.acl\n(.*?)```", text, re.S)
    assert match, "docs/security.md lost its Mosquitto ACL example"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    def __init__(self, tmp: Path, devices: dict[str, str]) -> None:
        self.port = _free_port()
        passwd = tmp / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(passwd), SERVER_USER, SERVER_PASSWORD],
            check=True,
        )
        for user, password in devices.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
        (tmp / "tinyfleet.acl").write_text(_documented_acl())
        (tmp / "mosquitto.conf").write_text(
            # Run as whoever runs the tests (as root, mosquitto would switch to its own
            # user, which cannot read pytest's private tmp dirs).
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {passwd}\nacl_file {tmp / 'tinyfleet.acl'}\npersistence false\n"
        )
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(tmp / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "mosquitto.log").open("wb"),
        )
        wait_for(self._listening, timeout=10, interval=0.05)

    def _listening(self) -> bool:
        assert self.proc.poll() is None, "mosquitto exited; see mosquitto.log in tmp_path"
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def devices() -> dict[str, str]:
    return {str(uuid.uuid4()): uuid.uuid4().hex for _ in range(2)}


@pytest.fixture
def broker(tmp_path: Path, devices: dict[str, str]) -> Iterator[Broker]:
    running = Broker(tmp_path, devices)
    yield running
    running.stop()


def _client(broker: Broker, user: str, password: str) -> tuple[mqtt.Client, list[Any]]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")
    client.username_pw_set(user, password)
    received: list[Any] = []
    client.on_message = lambda c, u, m: received.append(m)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client, received


def _subscribe(client: mqtt.Client, topic: str) -> list[Any]:
    done, codes = threading.Event(), []

    def on_subscribe(c: Any, u: Any, mid: int, reasons: list[Any], p: Any) -> None:
        codes.extend(reasons)
        done.set()

    client.on_subscribe = on_subscribe
    client.subscribe(topic, qos=1)
    assert done.wait(10)
    return codes


def test_the_documented_acl_confines_each_device_to_its_own_topic(
    broker: Broker, devices: dict[str, str], tmp_path: Path
) -> None:
    (alpha, alpha_pw), (beta, beta_pw) = devices.items()
    secret = tmp_path / "alpha.password"
    secret.write_text(alpha_pw + "\n")

    # The agent's own listener, logging in as its device id with its password file.
    statuses: list[str] = []
    woken = threading.Event()
    listener = WakeupListener(
        alpha,
        woken.set,
        MqttOptions(password_file=secret),
        on_status=statuses.append,
    )
    listener.follow({"url": f"mqtt://127.0.0.1:{broker.port}", "topic": push.topic_for(alpha)})
    beta_client, beta_got = _client(broker, beta, beta_pw)
    try:
        wait_for(lambda: "mqtt-subscribed" in statuses, timeout=10)
        assert not (_subscribe(beta_client, push.topic_for(beta))[0]).is_failure
        # Mosquitto grants a 3.1.1 subscription it may not serve, then never delivers on it.
        _subscribe(beta_client, push.topic_for(alpha))

        # The server account wakes both; beta sees its own wake-up only.
        server = push.Broker("127.0.0.1", broker.port, False, SERVER_USER, SERVER_PASSWORD, None)
        assert push.publish_wakeups(server, [alpha, beta]) == 2
        assert woken.wait(10)
        wait_for(lambda: len(beta_got) >= 1, timeout=10)

        # beta cannot wake alpha either.
        woken.clear()
        beta_client.publish(push.topic_for(alpha), b"{}", qos=1).wait_for_publish(10)
        assert not woken.wait(1.5)
        assert [m.topic for m in beta_got] == [push.topic_for(beta)]
    finally:
        listener.stop()
        beta_client.disconnect()
        beta_client.loop_stop()


def test_a_wrong_device_password_is_refused_and_reported(
    broker: Broker, devices: dict[str, str], tmp_path: Path
) -> None:
    alpha = next(iter(devices))
    secret = tmp_path / "wrong.password"
    secret.write_text("not-the-password")
    statuses: list[str] = []
    listener = WakeupListener(
        alpha, lambda: None, MqttOptions(password_file=secret), on_status=statuses.append
    )
    listener.follow({"url": f"mqtt://127.0.0.1:{broker.port}", "topic": push.topic_for(alpha)})
    try:
        wait_for(lambda: any(s.startswith("mqtt-refused") for s in statuses), timeout=10)
    finally:
        listener.stop()
    server = push.Broker("127.0.0.1", broker.port, False, SERVER_USER, "wrong", None)
    assert push.publish_wakeups(server, [alpha]) == 0  # counted as failed, never raised
