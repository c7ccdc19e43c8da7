"""Optional MQTT wake-ups: tell a device to poll now because its desired state changed.

Polling with an ETag is the channel that matters (authenticated, always on); a wake-up is
only a latency hint. So:

- the hook (`wake_after_commit`) runs where Assignment rows change (the director's
  `assign` / `unassign`, which rollouts, rollbacks, group joins and revocation all go
  through) and publishes only after the surrounding transaction commits: a rolled-back
  change wakes nobody, and a device never polls before the change is visible;
- publishing happens on a background thread of the process that committed, so a slow or
  dead broker never blocks or fails a request, a rollout step or a Celery task: failures
  are logged and counted, and devices pick the change up at their next poll;
- a wave's wake-ups are coalesced for a moment, de-duplicated and sent over one
  connection (one topic per device);
- the payload carries no secret and nothing the device acts on beyond "poll now", so a
  forged wake-up costs at most one extra (authenticated) poll. QoS 1, not retained: a
  retained hint would wake every reconnecting device for a change it already fetched,
  and devices keep a persistent session, so a wake-up sent during a short disconnect is
  still delivered when they come back.

Pending wake-ups live in process memory: if the process exits before sending them, the
devices still converge at their next poll.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db import transaction

log = logging.getLogger("tinyfleet.push")

TOPIC_PREFIX = "tinyfleet/devices/"
PAYLOAD = json.dumps({"v": 1, "poll": True}, separators=(",", ":")).encode()
COALESCE_S = 0.05  # let the rest of a wave's commit callbacks queue up first
MAX_PENDING = 200_000  # beyond this, wake-ups are dropped (and counted): polls catch up
CONNECT_TIMEOUT_S = 3.0
PUBLISH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    ca_file: str | None


def broker_from_settings() -> Broker | None:
    """The broker the server publishes to, or None when MQTT is off."""
    url = settings.MQTT_URL
    if not url:
        return None
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return Broker(
        host=parts.hostname or "",
        port=parts.port or (8883 if tls else 1883),
        tls=tls,
        username=settings.MQTT_USERNAME or (unquote(parts.username) if parts.username else None),
        password=settings.MQTT_PASSWORD or (unquote(parts.password) if parts.password else None),
        ca_file=settings.MQTT_CA_FILE or None,
    )


def topic_for(device_id: Any) -> str:
    return f"{TOPIC_PREFIX}{device_id}"


def announcement(device_id: Any) -> dict[str, str] | None:
    """What the device API tells a device about push (None when MQTT is off)."""
    if not settings.MQTT_URL:
        return None
    return {"url": settings.MQTT_DEVICE_URL, "topic": topic_for(device_id)}


def wake_after_commit(device_ids: Iterable[Any]) -> None:
    """Wake these devices once the current transaction commits (at once outside one)."""
    if not settings.MQTT_URL:
        return
    ids = [str(d) for d in device_ids]
    if ids:
        transaction.on_commit(lambda: publisher().submit(ids), robust=True)


def publish_wakeups(broker: Broker, device_ids: list[str]) -> int:
    """Publish one wake-up per device over a single connection; returns how many the
    broker acknowledged (QoS 1).

    Raises:
        OSError: the broker cannot be reached (refused, DNS, TLS, timeout).
    """
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"tinyfleet-server-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.connect_timeout = CONNECT_TIMEOUT_S
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)  # verifies the broker's certificate and name
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(topic_for(d), PAYLOAD, qos=1, retain=False) for d in device_ids]
        # Scales with the wave: the broker acknowledges thousands per second.
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S + len(infos) / 1000
        for info in infos:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                info.wait_for_publish(timeout=remaining)
            except (RuntimeError, ValueError):
                break  # not connected (refused CONNACK, dropped): count what got through
        return sum(1 for info in infos if _acknowledged(info))
    finally:
        client.disconnect()
        client.loop_stop()


def _acknowledged(info: Any) -> bool:
    try:
        return bool(info.is_published())
    except (RuntimeError, ValueError):  # paho raises for a message it could never send
        return False


class WakeupPublisher:
    """A per-process background sender: `submit` never blocks on the network."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, None] = {}  # an ordered set: one wake-up per device
        self._busy = False
        self._thread: threading.Thread | None = None
        self.stats: Counter[str] = Counter()

    def submit(self, device_ids: Iterable[str]) -> None:
        with self._cond:
            for device_id in device_ids:
                if len(self._pending) >= MAX_PENDING:
                    self.stats["dropped"] += 1  # (under the lock, like every count)
                    continue
                self._pending[device_id] = None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tinyfleet-mqtt-wakeups", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far was sent (or given up on)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
            time.sleep(COALESCE_S)
            with self._cond:
                batch, self._pending = list(self._pending), {}
                self._busy = True
            try:
                self._send(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _count(self, result: str, n: int) -> None:
        with self._cond:
            self.stats[result] += n

    def _send(self, batch: list[str]) -> None:
        broker = broker_from_settings()
        if broker is None:
            self._count("dropped", len(batch))  # MQTT was switched off meanwhile
            return
        try:
            sent = publish_wakeups(broker, batch)
        except Exception as exc:  # a broker problem must never escape this thread
            self._count("failed", len(batch))
            log.warning(
                "mqtt wake-up failed for %d device(s) (%s: %s); they will see the change "
                "at their next poll",
                len(batch),
                type(exc).__name__,
                exc,
            )
            return
        self._count("published", sent)
        if sent < len(batch):
            self._count("failed", len(batch) - sent)
            log.warning(
                "mqtt broker acknowledged %d of %d wake-ups; the rest poll as usual",
                sent,
                len(batch),
            )


_publisher: WakeupPublisher | None = None
_publisher_pid = 0
_publisher_lock = threading.Lock()


def publisher() -> WakeupPublisher:
    """This process's publisher (a fresh one after fork: threads do not survive it)."""
    global _publisher, _publisher_pid
    with _publisher_lock:
        if _publisher is None or _publisher_pid != os.getpid():
            _publisher, _publisher_pid = WakeupPublisher(), os.getpid()
        return _publisher


def prometheus_lines() -> list[str]:
    stats = publisher().stats
    lines = [
        "# HELP tinyfleet_mqtt_wakeups_total MQTT wake-ups by result (this process).",
        "# TYPE tinyfleet_mqtt_wakeups_total counter",
    ]
    for result in ("published", "failed", "dropped"):
        lines.append(f'tinyfleet_mqtt_wakeups_total{{result="{result}"}} {stats[result]}')
    return lines
