"""MQTT wake-ups: poll at once when the server says this device's desired state changed.

A wake-up is only a hint. The agent never acts on a message's content: any message on
its topic makes the update loop poll now (de-bounced by the loop), and the poll is the
authenticated channel that decides everything. A forged or garbage message therefore
costs at most one extra poll. Polling continues at the server's interval whether the
broker is up, down or never configured.

paho-mqtt is optional (`pip install 'tinyfleet-agent[mqtt]'`) and imported only when the
server announces a broker. paho's network thread connects, reconnects with backoff and
keeps a persistent session (clean_session false, QoS 1), so a wake-up sent during a
short disconnect is delivered when the device is back.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("tinyfleet_agent.wakeup")

MAX_WAKEUP_BYTES = 1024  # the server sends ~20 bytes; anything big is not ours
MAX_TOPIC_CHARS = 256
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 120
KEEPALIVE_S = 60
INSTALL_HINT = "pip install 'tinyfleet-agent[mqtt]'"


class MqttUnavailableError(RuntimeError):
    """MQTT was required (`mqtt = "on"`) but paho-mqtt is not installed."""


def paho_available() -> bool:
    try:
        return importlib.util.find_spec("paho.mqtt.client") is not None
    except ImportError:  # no `paho` package at all, or a broken one
        return False


def require_paho() -> None:
    """Raises MqttUnavailableError with the install command when paho-mqtt is missing."""
    if not paho_available():
        raise MqttUnavailableError(f"mqtt is on but paho-mqtt is not installed: {INSTALL_HINT}")


@dataclass(frozen=True)
class MqttOptions:
    """The device's side of the broker connection (from agent.toml / env)."""

    url: str | None = None  # overrides the server's announced URL (a local gateway)
    username: str | None = None  # default: the device id, when a password is set
    password_file: Path | None = None
    ca_file: Path | None = None  # mqtts: CA bundle (default: system CAs)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    topic: str


def parse_endpoint(announced: Any, override_url: str | None = None) -> Endpoint:
    """The broker and topic from the state answer's `mqtt` object.

    Raises:
        ValueError: not {"url": "mqtt(s)://host[:port]", "topic": "..."} or a topic
            with wildcards.
    """
    if not isinstance(announced, dict):
        raise ValueError("mqtt announcement is not an object")
    url, topic = override_url or announced.get("url"), announced.get("topic")
    if not isinstance(url, str) or not isinstance(topic, str):
        raise ValueError("mqtt announcement needs a url and a topic")
    if not topic or len(topic) > MAX_TOPIC_CHARS or any(c in topic for c in "#+\0"):
        raise ValueError(f"mqtt topic {topic[:80]!r} is not a plain topic name")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"mqtt url {url[:80]!r} is not mqtt://host or mqtts://host")
    tls = parts.scheme == "mqtts"
    return Endpoint(parts.hostname, parts.port or (8883 if tls else 1883), tls, topic)


class WakeupListener:
    """Subscribes to the device's topic in paho's thread; `on_wake()` on each message."""

    def __init__(
        self,
        device_id: str,
        on_wake: Callable[[], None],
        options: MqttOptions | None = None,
        on_status: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.device_id, self.on_wake, self.on_status = device_id, on_wake, on_status
        self.options = options or MqttOptions()
        self.endpoint: Endpoint | None = None
        self._client: Any = None

    def follow(self, announced: Any) -> None:
        """Apply the latest state answer's `mqtt` object: (re)subscribe when it changed,
        disconnect when the server stopped announcing a broker."""
        endpoint = None
        if announced is not None:
            try:
                endpoint = parse_endpoint(announced, self.options.url)
            except ValueError as exc:
                log.warning("ignoring the server's mqtt announcement: %s", exc)
        if endpoint == self.endpoint:
            return
        self.stop()
        if endpoint is not None:
            self._start(endpoint)

    def _start(self, endpoint: Endpoint) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            # A stable id plus clean_session=False: the broker keeps the subscription
            # and queues QoS 1 wake-ups while the device is briefly away.
            client_id=f"tinyfleet-{self.device_id}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        password = self._password()
        if password is not None:
            client.username_pw_set(self.options.username or self.device_id, password)
        elif self.options.username:
            client.username_pw_set(self.options.username)
        if endpoint.tls:
            ca = str(self.options.ca_file) if self.options.ca_file else None
            client.tls_set(ca_certs=ca)  # verifies the broker's certificate and name
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # Set before the network thread starts: its first CONNACK may come at once.
        self._client, self.endpoint = client, endpoint
        client.connect_async(endpoint.host, endpoint.port, keepalive=KEEPALIVE_S)
        client.loop_start()  # paho's thread: connects, retries with backoff, delivers
        log.info("mqtt-connecting", extra={"host": endpoint.host, "topic": endpoint.topic})

    def _password(self) -> str | None:
        path = self.options.password_file
        if path is None:
            return None
        try:
            return path.read_text().strip()
        except OSError as exc:
            log.warning("cannot read mqtt_password_file %s: %s", path, exc)
            return None

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.on_status(f"mqtt-refused: {reason}")
            log.warning("mqtt broker refused the connection: %s", reason)
            return
        endpoint = self.endpoint
        if endpoint is not None:
            # Also after a resumed session: subscribing again is idempotent and covers a
            # broker that lost its sessions (restart without persistence).
            client.subscribe(endpoint.topic, qos=1)
        self.on_status("mqtt-connected")

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reasons: list[Any], props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:  # e.g. the broker's ACL does not let this device read its topic
            self.on_status(f"mqtt-subscribe-refused: {refused[0]}")
            log.warning("mqtt broker refused the subscription: %s", refused[0])
        else:
            self.on_status("mqtt-subscribed")

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.on_status("mqtt-disconnected")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # paho re-raises callback errors in its thread (ending it): nothing may escape.
        try:
            endpoint = self.endpoint
            if endpoint is None or message.topic != endpoint.topic:
                return
            if len(message.payload) > MAX_WAKEUP_BYTES:
                log.warning("ignoring an oversized mqtt message (%d bytes)", len(message.payload))
                return
            self.on_wake()  # a hint only: the loop polls, and the poll decides
        except Exception:
            log.exception("mqtt wake-up handling failed")

    def stop(self) -> None:
        client, self._client, self.endpoint = self._client, None, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
