"""Talking to a tinyfleet server: `enroll` once, then `run` (serve + update + report)."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import Any

from ._internal.client import DeviceClient, ServerError
from ._internal.fallback import FallbackForwarder
from ._internal.identity import CREDENTIAL_FILE, DEVICE_FILE, load_or_create_keys, write_secret
from ._internal.outbox import Outbox
from ._internal.record import canonical_json
from ._internal.slots import SlotStore
from ._internal.stream_aead import atomic_write_bytes
from ._internal.sysinfo import device_facts
from ._internal.tuf_verify import TrustedState
from ._internal.updater import TRUST_FILE, Updater
from ._internal.wakeup import INSTALL_HINT, MqttOptions, WakeupListener, paho_available
from .config import AgentConfig

log = logging.getLogger("tinyfleet_agent.fleet")


class EnrollError(Exception):
    """Enrollment failed; nothing about the device was kept on the server's word."""


def root_fingerprint(root: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(root)).hexdigest()


def enroll(
    state_dir: Path,
    server: str,
    token: str,
    *,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    pin: str | None = None,
) -> dict[str, Any]:
    """Generate keys here, enroll, and store the credential and trusted roots.

    Raises:
        EnrollError: already enrolled, the server refused, or the roots do not match
            the pinned fingerprint.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (state_dir / DEVICE_FILE).exists():
        raise EnrollError(
            f"already enrolled (see {state_dir / DEVICE_FILE}); "
            "use a fresh --state-dir to enroll again"
        )
    keys = load_or_create_keys(state_dir)
    name = name or platform.node() or "device"
    body = {
        "token": token,
        "name": name,
        "labels": labels or {},
        "facts": device_facts(),
        "identity_public_key": keys.identity_public_hex,
        "encryption_public_key": keys.encryption_public_hex,
        "proof": keys.proof(token, name),
    }
    try:
        answer = DeviceClient(server).enroll(body)
    except ServerError as exc:
        raise EnrollError(f"enrollment refused: {exc}") from exc
    if pin and root_fingerprint(answer["image_root"]) != pin.lower():
        raise EnrollError("the server's image root does not match --root-fingerprint")
    trust = TrustedState.bootstrap(
        canonical_json(answer["image_root"]), canonical_json(answer["director_root"])
    )
    atomic_write_bytes(state_dir / TRUST_FILE, trust.to_json())
    write_secret(state_dir / CREDENTIAL_FILE, answer["credential"].encode())
    device = {
        "device_id": answer["device_id"],
        "server": server.rstrip("/"),
        "name": name,
        "poll_interval": answer["poll_interval"],
        "image_root_fingerprint": root_fingerprint(answer["image_root"]),
    }
    atomic_write_bytes(state_dir / DEVICE_FILE, json.dumps(device, indent=2).encode())
    return device


def load_device(state_dir: Path) -> tuple[dict[str, Any], str]:
    device = json.loads((state_dir / DEVICE_FILE).read_text())
    return device, (state_dir / CREDENTIAL_FILE).read_text().strip()


class FleetLink:
    """Runs the updater and the telemetry sender beside the local API."""

    def __init__(self, config: AgentConfig, api: Any) -> None:
        device, credential = load_device(config.state_dir)
        self.config, self.api = config, api
        self.client = DeviceClient(device["server"], credential)
        api.fallback = FallbackForwarder(
            device_id=device["device_id"], count=api.telemetry.record_fallback
        )
        self.updater = Updater(
            client=self.client,
            keys=load_or_create_keys(config.state_dir),
            device_id=device["device_id"],
            store=SlotStore(config.state_dir),
            state_dir=config.state_dir,
            threads=config.threads,
            poll_interval=float(device.get("poll_interval") or config.poll_interval_s),
            on_health=lambda **values: api.set_health(**values),
            on_selftest=self._on_selftest,
            on_state=self._apply_state,
        )
        self.wakeups = _wakeup_listener(config, device["device_id"], self.updater.wake, api)
        self.outbox = Outbox(config.state_dir / "telemetry.sqlite", config.outbox_capacity)
        self.stop = threading.Event()
        self._last_telemetry = time.monotonic()
        self._hinted = False
        self._thread = threading.Thread(
            target=self.updater.run, args=(self.stop,), name="updater", daemon=True
        )

    def _on_selftest(self, bundle: str, ok: bool, agreement: float) -> None:
        """Feeds the golden-agreement gate of rollouts. Sent with the next tick rather
        than after a whole telemetry interval: a rollout's wave waits for this evidence."""
        self.api.telemetry.record_golden(bundle, ok, agreement)
        self._last_telemetry = float("-inf")

    def _apply_state(self, body: dict[str, Any]) -> None:
        """Settings that ride on each fresh state answer: fallback and MQTT wake-ups."""
        self._follow_push(body)
        # Absent or null: the operator has not enabled a fallback for this device's groups.
        fallback = body.get("fallback")
        url = fallback.get("url") if isinstance(fallback, dict) else None
        self.api.fallback.configure(url if isinstance(url, str) else None)
        self.api.set_health(fallback=self.api.fallback.url)  # visible in /v1/health

    def start(self) -> None:
        self._thread.start()

    def tick(self) -> None:
        """Once a second on the main thread: batch telemetry and send what is pending."""
        if time.monotonic() - self._last_telemetry < self.config.telemetry_interval_s:
            return
        self._last_telemetry = time.monotonic()
        self.outbox.put(self.api.telemetry.snapshot_and_reset())
        self._send_telemetry()

    def _send_telemetry(self) -> None:
        for batch in self.outbox.peek(20):
            try:
                self.client.telemetry(batch)
            except ServerError as exc:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    self.outbox.ack([batch["batch_id"]])  # the server will never take it
                    log.warning("telemetry batch refused: %s", exc)
                    continue
                return  # offline: keep it for later
            self.outbox.ack([batch["batch_id"]])

    def _follow_push(self, state: dict[str, Any]) -> None:
        """Each fresh state answer says whether (and where) the server pushes wake-ups."""
        announced = state.get("mqtt")
        if self.wakeups is not None:
            self.wakeups.follow(announced)
        elif announced is not None and self.config.mqtt == "auto" and not self._hinted:
            self._hinted = True
            log.info("the server offers MQTT wake-ups; to use them: %s", INSTALL_HINT)

    def close(self) -> None:
        self.api.fallback.close()
        self.stop.set()
        if self.wakeups is not None:
            self.wakeups.stop()
        self._thread.join(timeout=10)


def _wakeup_listener(
    config: AgentConfig, device_id: str, wake: threading.Event, api: Any
) -> WakeupListener | None:
    """A listener when MQTT is allowed and paho-mqtt is installed (else polling only)."""
    if config.mqtt == "off" or not paho_available():
        return None
    options = MqttOptions(
        url=config.mqtt_url,
        username=config.mqtt_username,
        password_file=config.mqtt_password_file,
        ca_file=config.mqtt_ca_file,
    )
    return WakeupListener(
        device_id, wake.set, options, on_status=lambda status: api.set_health(push=status)
    )
