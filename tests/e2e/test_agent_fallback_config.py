"""The group's low-confidence fallback reaches a real `tinyfleet-agent run` process
through its desired-state polls (live server, real agent process; forwarding itself is
tested against a real endpoint in tests/agent/test_fallback.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.agent_helpers import Agent

pytestmark = [pytest.mark.django_db(transaction=True)]

URL = "http://127.0.0.1:9/classify"  # loopback http is allowed; nothing is sent here


def _put(api: Any, path: str, body: dict[str, Any]) -> Any:
    return api.client.put(path, json.dumps(body), content_type="application/json")


def test_the_agent_follows_its_groups_fallback_setting(
    live_server: Any, alice_api: Any, tmp_path: Path, settings: Any
) -> None:
    settings.DEVICE_POLL_INTERVAL = 1
    group = alice_api.post("/api/v1/groups", {"name": "kiosks"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    agent = Agent("kiosk", tmp_path / "kiosk")
    agent.cli("enroll", "--server", live_server.url, "--token", token, "--name", "kiosk")
    agent.start()
    try:
        wait_for(lambda: "fallback" in _health(agent), timeout=30)
        assert _health(agent)["fallback"] is None  # off by default
        path = f"/api/v1/groups/{group['id']}/fallback"
        assert _put(alice_api, path, {"enabled": True, "url": URL}).status_code == 200
        wait_for(lambda: _health(agent).get("fallback") == URL, timeout=30)
        assert _put(alice_api, path, {"enabled": False}).status_code == 200
        wait_for(lambda: _health(agent).get("fallback") is None, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log()}") from exc
    finally:
        agent.stop()


def _health(agent: Agent) -> dict[str, Any]:
    try:
        return dict(agent.get("/v1/health"))
    except (OSError, ValueError):
        return {}
