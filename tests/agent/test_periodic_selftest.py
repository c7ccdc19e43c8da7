"""Periodic in-field golden self-tests in a real `tinyfleet-agent serve-local` process.

Real parts: the agent process, its local API over a real socket, a real ONNX model and
its golden set. The one arrangement: to make the serving model disagree with its golden
set we overwrite the slot's golden.npz with references from a different parent model
(same shapes, same size), which is what the self-test sees when a model drifts from its
reference on the device.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tinyfleet_agent._internal.outbox import Outbox

from . import agent_fixtures as F
from .test_cli_local import AGENT, Agent


class SelfTestingAgent(Agent):
    """serve-local with a short self-test interval (and optional rollback on failure)."""

    def __init__(self, state: Path, *, rollback: bool) -> None:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(AGENT),
            "TINYFLEET_AGENT_SELFTEST_INTERVAL_S": "0.3",
            "TINYFLEET_AGENT_SELFTEST_ROLLBACK": "true" if rollback else "false",
        }
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "tinyfleet_agent.cli", "--state-dir", str(state)),
                *("serve-local", "--listen", "127.0.0.1:0"),
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.logs: list[dict[str, Any]] = []
        self.address = self._wait_for("listening")["address"]

    def predict(self, text: str) -> int:
        host, port = self.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/v1/predict", json.dumps({"inputs": [text]}))
        response = conn.getresponse()
        response.read()
        return response.status


def _eventually(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError("condition never became true")


def _events(state: Path) -> list[dict[str, Any]]:
    """The events waiting for the server (the agent's own outbox)."""
    return [item["event"] for item in Outbox(state / "events.sqlite", capacity=500).peek(500)]


def _drift(state: Path, work: Path) -> None:
    """Give the active slot a golden set from another parent (same size on disk)."""
    work.mkdir(parents=True, exist_ok=True)
    slot = json.loads((state / "current").read_text())["slot"]
    golden = state / "slots" / slot / "golden.npz"
    other = F.build_encoder_onnx(work / "other.onnx", "text-classification", seed=5)
    tokenizer = F.write_tokenizer(work / "tokenizer.json")
    F.write_golden(work / "golden.npz", other, tokenizer, "text-classification", F.TEXTS)
    assert (work / "golden.npz").stat().st_size == golden.stat().st_size
    os.replace(work / "golden.npz", golden)


@pytest.fixture
def two_releases(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    F.install(state, tmp_path / "w1", release=1)
    F.install(state, tmp_path / "w2", release=2)
    return state


def _serving_requests(agent: SelfTestingAgent, stop: threading.Event, codes: list[int]) -> None:
    while not stop.is_set():
        codes.append(agent.predict("turn the lights on"))


@pytest.fixture
def running(two_releases: Path, request: pytest.FixtureRequest) -> Iterator[SelfTestingAgent]:
    agent = SelfTestingAgent(two_releases, rollback=request.param)
    yield agent
    if agent.process.poll() is None:
        agent.stop()


@pytest.mark.parametrize("running", [False], indirect=True)
def test_it_runs_the_golden_set_periodically_and_reports_a_failure_without_rolling_back(
    running: SelfTestingAgent, two_releases: Path, tmp_path: Path
) -> None:
    stop, codes = threading.Event(), []
    client = threading.Thread(target=_serving_requests, args=(running, stop, codes))
    client.start()
    try:
        first = _eventually(lambda: running.get("/v1/health").get("last_periodic_selftest"))
        assert first["passed"] is True and first["bundle"] == "intent-r2"
        assert first["agreement"] == 1.0 and first["count"] == len(F.TEXTS)
        _drift(two_releases, tmp_path / "drift")
        failed = _eventually(
            lambda: (
                (s := running.get("/v1/health").get("last_periodic_selftest"))
                and not s["passed"]
                and s
            )
        )
    finally:
        stop.set()
        client.join()
    assert "below-tolerance" in failed["reason"]
    assert codes and set(codes) == {200}  # requests were answered all along
    assert running.get("/v1/health")["bundle"] == "intent-r2"  # no rollback by default
    status = json.loads((two_releases / "status.json").read_text())
    assert status["last_periodic_selftest"]["passed"] is False
    reported = [e for e in _events(two_releases) if e["state"] == "selftest-failed"]
    assert reported and reported[0]["bundle"] == "intent-r2"
    assert "below-tolerance" in reported[0]["reason"]


@pytest.mark.parametrize("running", [True], indirect=True)
def test_it_rolls_back_on_a_failed_periodic_selftest_only_when_configured(
    running: SelfTestingAgent, two_releases: Path, tmp_path: Path
) -> None:
    _eventually(lambda: running.get("/v1/health").get("last_periodic_selftest"))
    _drift(two_releases, tmp_path / "drift")
    _eventually(lambda: running.get("/v1/health").get("bundle") == "intent-r1")
    states = [(e["state"], e["bundle"]) for e in _events(two_releases)]
    assert ("selftest-failed", "intent-r2") in states
    assert ("rolled-back", "intent-r1") in states and ("refused", "intent-r2") in states
    status = json.loads((two_releases / "status.json").read_text())
    assert status["rejected_locally"]["bundle"] == "intent-r2"
    # The model rolled back to passes its own periodic test.
    _eventually(
        lambda: (
            (s := running.get("/v1/health").get("last_periodic_selftest"))
            and s["bundle"] == "intent-r1"
            and s["passed"]
        )
    )


def test_a_late_second_failure_of_the_bundle_rolled_away_from_does_not_roll_back_again(
    two_releases: Path,
) -> None:
    from types import SimpleNamespace

    from tinyfleet_agent._internal.fieldtest import reporter
    from tinyfleet_agent._internal.selftest import SelfTestResult
    from tinyfleet_agent._internal.slots import SlotStore

    store = SlotStore(two_releases)
    api = SimpleNamespace(
        telemetry=SimpleNamespace(record_golden=lambda *_: None), set_health=lambda **_: None
    )
    report = reporter(store, api, rollback=True)
    failed = SelfTestResult(False, 0.5, 0.2, 8, "below-tolerance", "cosine")
    report("intent-r2", failed)
    active = store.active()
    assert active is not None and active.meta.bundle == "intent-r1"
    # The served model still was r2 when a second periodic run finished: no second switch.
    report("intent-r2", failed)
    active = store.active()
    assert active is not None and active.meta.bundle == "intent-r1"
    status = json.loads((two_releases / "status.json").read_text())
    assert status["rejected_locally"]["bundle"] == "intent-r2"
