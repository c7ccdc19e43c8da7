"""`tinyfleet-agent rollback` on the device: reported to the server, and not undone by the
next poll. Real parts: the live server, a real Celery worker building the bundles, and a
real `tinyfleet-agent run` process (restarted once) plus the real CLI command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from compression.models import ModelVersion
from fleet.models import Bundle, Device, DeviceEvent
from fleet.security import director
from tests.compression.helpers import upload
from tests.conftest import Worker, wait_for
from tests.e2e.agent_helpers import Agent, _derive, _publish, _text_model_zip

pytestmark = [pytest.mark.django_db(transaction=True)]


def _status(agent: Agent) -> dict[str, Any]:
    try:
        return dict(json.loads((agent.state_dir / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def test_a_local_rollback_is_reported_and_the_rejected_bundle_is_not_reinstalled(
    live_server: Any, celery_worker: Worker, alice_api: Any, tmp_path: Path, settings: Any
) -> None:
    settings.DEVICE_POLL_INTERVAL = 1
    uploaded = upload(alice_api, _text_model_zip(tmp_path), name="local-rollback")
    wait_for(lambda: ModelVersion.objects.get(pk=uploaded.json()["id"]).status == "ready")
    parent = uploaded.json()["id"]
    first = _publish(_derive(alice_api, parent, "onnx-int8-dynamic"))
    second = _publish(_derive(alice_api, parent, "onnx-fp16"))
    third = _publish(_derive(alice_api, parent, "onnx-int8-dynamic", {"per_channel": False}))
    group = alice_api.post("/api/v1/groups", {"name": "bench"}).json()
    token = alice_api.post("/api/v1/enrollment-tokens", {"group": group["id"]}).json()["token"]
    agent = Agent("pi", tmp_path / "pi")
    agent.cli("enroll", "--server", live_server.url, "--token", token, "--name", "pi")
    device = Device.objects.get()
    agent.start()
    try:
        for bundle in (first, second):
            director.assign(device, Bundle.objects.get(pk=bundle))
            wait_for(lambda b=bundle: agent.serving() == b, timeout=60)  # type: ignore[misc]

        done = agent.cli("rollback")
        assert f"rolled back to {first}" in done.stdout
        wait_for(lambda: agent.serving() == first, timeout=30)
        # The server hears of it: the device's active bundle, and both events.
        wait_for(lambda: Device.objects.get().state.get("active_bundle") == first, timeout=30)
        rolled = DeviceEvent.objects.get(device=device, state="rolled-back")
        assert rolled.bundle == first and rolled.reason == "local rollback"
        assert rolled.detail == {"rejected": second}
        refused = DeviceEvent.objects.get(device=device, state="refused")
        assert refused.bundle == second and "rejected locally" in refused.reason

        # A restarted agent (no ETag in memory) polls, sees `second` still assigned, and
        # keeps the operator's decision instead of reinstalling it.
        agent.stop()
        marker = DeviceEvent.objects.order_by("-id").first()
        agent.start()
        wait_for(
            lambda: _status(agent).get("last_check", {}).get("outcome") == "rejected-locally",
            timeout=30,
        )
        assert agent.serving() == first
        later = DeviceEvent.objects.filter(pk__gt=marker.pk if marker else 0)
        assert not later.filter(bundle=second).exists(), list(later.values("state", "bundle"))
        assert _status(agent)["rejected_locally"]["bundle"] == second

        # A different assignment is installed, and the rejection is forgotten.
        director.assign(device, Bundle.objects.get(pk=third))
        wait_for(lambda: agent.serving() == third, timeout=60)
        assert _status(agent)["rejected_locally"] is None
        status = json.loads(agent.cli("status", "--json").stdout)
        assert status["active"]["bundle"] == third and status["previous"]["bundle"] == first
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- agent log ---\n{agent.log()}") from exc
    finally:
        agent.stop()
