"""A golden self-test result leaves the device with the next tick, not after a whole
telemetry interval: rollout gates wait for it (no Django; a real HTTP server stands in
for the device API and records what arrives)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tinyfleet_agent._internal.identity import CREDENTIAL_FILE, DEVICE_FILE
from tinyfleet_agent._internal.telemetry import Telemetry
from tinyfleet_agent.config import load_config
from tinyfleet_agent.fleet import FleetLink


class Recorder:
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/telemetry"):
                    outer.batches.append(json.loads(body))
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Api:
    """What FleetLink needs of the local API."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()
        self.fallback: Any = None

    def set_health(self, **values: Any) -> None:
        pass


@pytest.fixture
def link(tmp_path: Path) -> Iterator[tuple[FleetLink, Recorder]]:
    server = Recorder()
    (tmp_path / DEVICE_FILE).write_text(
        json.dumps({"device_id": "d-1", "server": server.url, "poll_interval": 30})
    )
    (tmp_path / CREDENTIAL_FILE).write_text("tfd_test")
    config = load_config({"state_dir": tmp_path}, env={"TINYFLEET_AGENT_MQTT": "off"})
    assert config.telemetry_interval_s == 300
    fleet = FleetLink(config, Api())
    yield fleet, server
    fleet.api.fallback.close()  # the updater thread was never started: no close()
    server.server.shutdown()


def test_it_sends_a_self_test_result_at_the_next_tick(link: tuple[FleetLink, Recorder]) -> None:
    fleet, server = link
    fleet.tick()
    assert server.batches == []  # nothing due: the interval is 300 s
    fleet.updater.on_selftest("b-1", True, 0.998)
    fleet.tick()
    (batch,) = server.batches
    (section,) = batch["bundles"]
    assert section["bundle"] == "b-1" and section["golden"]["min_agreement"] == 0.998
    fleet.tick()
    assert len(server.batches) == 1  # and then back to the interval
