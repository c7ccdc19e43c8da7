"""The tinyfleet-agent command in real subprocesses, plus its configuration and logs."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tinyfleet_agent._internal.logs import fields, setup_logging
from tinyfleet_agent.config import AgentConfig, ConfigError, load_config, parse_listen

from . import agent_fixtures as F

AGENT = Path(__file__).resolve().parents[2] / "agent"
ENV = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(AGENT)}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyfleet_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


class Agent:
    """`tinyfleet-agent serve-local` running in a subprocess."""

    def __init__(self, state: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tinyfleet_agent.cli",
                "--state-dir",
                str(state),
                "serve-local",
                "--listen",
                "127.0.0.1:0",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        self.logs: list[dict[str, Any]] = []
        self.address = self._wait_for("listening")["address"]

    def _wait_for(self, event: str) -> dict[str, Any]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            entry: dict[str, Any] = json.loads(line)
            self.logs.append(entry)
            if entry["event"] == event:
                return entry
        raise AssertionError(f"agent never logged {event}: {self.logs}")

    def get(self, path: str) -> dict[str, Any]:
        host, port = self.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path)
        answer: dict[str, Any] = json.loads(conn.getresponse().read())
        return answer

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    F.install(state, tmp_path / "w1", release=1)
    return state


@pytest.fixture
def agent(state: Path) -> Iterator[Agent]:
    running = Agent(state)
    yield running
    if running.process.poll() is None:
        running.stop()


def test_it_serves_the_active_slot_and_predicts_through_it(agent: Agent, state: Path) -> None:
    assert (state / "agent.pid").read_text() == str(agent.process.pid)
    done = cli(
        "--state-dir",
        str(state),
        "predict",
        "turn the lights on",
        "play some music",
        "--json",
        "--listen",
        agent.address,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["bundle"] == "intent-r1" and len(answer["outputs"]) == 2
    human = cli("--state-dir", str(state), "predict", "open door", "--listen", agent.address)
    assert human.returncode == 0 and human.stdout.startswith("open door\t")
    assert human.stdout.split("\t")[1].split()[0] in F.LABELS
    assert agent.stop() == 0
    assert not (state / "agent.pid").exists()
    assert {e["event"] for e in agent.logs} >= {"listening", "model-loaded"}


def test_it_rolls_back_and_the_running_agent_follows(
    agent: Agent, state: Path, tmp_path: Path
) -> None:
    assert agent.get("/v1/health")["bundle"] == "intent-r1"
    F.install(state, tmp_path / "w2", release=2)  # the updater's switch
    assert _eventually(lambda: agent.get("/v1/health")["bundle"] == "intent-r2")
    done = cli("--state-dir", str(state), "rollback")
    assert done.returncode == 0 and "intent-r1" in done.stdout
    assert _eventually(lambda: agent.get("/v1/model")["bundle"] == "intent-r1")
    status = json.loads(cli("--state-dir", str(state), "status", "--json").stdout)
    assert status["agent_running"] is True
    assert status["active"]["bundle"] == "intent-r1" and status["previous"]["bundle"] == "intent-r2"
    assert status["runtimes"]["onnxruntime"]


def _eventually(check: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_it_keeps_serving_when_the_new_slot_cannot_load(
    agent: Agent, state: Path, tmp_path: Path
) -> None:
    slot = F.install(state, tmp_path / "w2", release=2)
    # Corrupt after sealing (same size): the load fails, release 1 keeps serving.
    model = slot.path / "model.onnx"
    model.write_bytes(b"\0" * model.stat().st_size)
    os.kill(agent.process.pid, signal.SIGHUP)
    assert _eventually(lambda: "failed to load" in str(agent.get("/v1/health").get("last_error")))
    assert agent.get("/v1/health")["bundle"] == "intent-r1"
    assert "failed to load" in json.loads((state / "status.json").read_text())["last_error"]


def test_it_predicts_in_process_and_reports_status_without_an_agent(state: Path) -> None:
    done = cli("--state-dir", str(state), "predict", "--in-process", "--json", "hello world")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"][0]["label"] in F.LABELS
    status = cli("--state-dir", str(state), "status")
    assert status.returncode == 0 and "intent-r1 release 1" in status.stdout
    assert "previous:   none" in status.stdout and "stopped" in status.stdout
    refused = cli("--state-dir", str(state), "predict", "hi", "--listen", "127.0.0.1:9")
    assert refused.returncode == 1 and "not reachable" in refused.stderr
    assert cli("--state-dir", str(state), "rollback").returncode == 1


def test_it_refuses_a_non_loopback_listen_address(state: Path) -> None:
    done = cli("--state-dir", str(state), "serve-local", "--listen", "0.0.0.0:0")
    assert done.returncode == 1
    assert json.loads(done.stderr.splitlines()[-1])["event"] == "cannot-listen"


# -- configuration and logs ---------------------------------------------------------------


def test_it_layers_defaults_file_env_and_flags(tmp_path: Path) -> None:
    assert load_config(env={}, config_path=None, cli={"state_dir": tmp_path}) == AgentConfig(
        state_dir=tmp_path
    )
    (tmp_path / "agent.toml").write_text(
        'threads = 2\nlisten = "127.0.0.1:9000"\nlog_level = "debug"\n'
    )
    config = load_config(
        cli={"state_dir": tmp_path, "listen": "[::1]:9100"},
        env={"TINYFLEET_AGENT_THREADS": "3", "TINYFLEET_AGENT_ALLOW_NON_LOOPBACK": "yes"},
    )
    assert (config.threads, config.listen, config.log_level) == (3, "[::1]:9100", "debug")
    assert config.allow_non_loopback is True and (config.host, config.port) == ("::1", 9100)
    assert load_config(env={"TINYFLEET_AGENT_STATE_DIR": str(tmp_path)}).threads == 2


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        ({"TINYFLEET_AGENT_THREADS": "many"}, "", "TINYFLEET_AGENT_THREADS"),
        ({"TINYFLEET_AGENT_THREADS": "0"}, "", "threads must be"),
        ({"TINYFLEET_AGENT_BOGUS": "1"}, "", "unknown setting 'bogus'"),
        ({}, "colour = 'blue'\n", "unknown setting 'colour'"),
        ({}, "threads = [", "agent.toml"),
        ({}, 'listen = "8470"\n', "HOST:PORT"),
        ({}, 'server = "ftp://x"\n', "an http"),
        ({"TINYFLEET_AGENT_ALLOW_NON_LOOPBACK": "maybe"}, "", "not a boolean"),
    ],
)
def test_it_fails_loudly_on_bad_configuration(
    tmp_path: Path, env: dict[str, str], toml: str, message: str
) -> None:
    (tmp_path / "agent.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(cli={"state_dir": tmp_path}, env=env)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_path=tmp_path / "missing.toml", env={})
    assert parse_listen("localhost:0") == ("localhost", 0)


def test_it_logs_one_json_object_per_line() -> None:
    stream = io.StringIO()
    setup_logging("info", stream)
    log = logging.getLogger("tinyfleet_agent.test")
    log.info("model-loaded", extra=fields(bundle="intent-r1", load_ms=12.5))
    log.debug("hidden")
    entry = json.loads(stream.getvalue())
    assert entry["event"] == "model-loaded" and entry["bundle"] == "intent-r1"
    assert entry["level"] == "info" and entry["logger"] == "tinyfleet_agent.test"
    setup_logging("warning")


def _status_json(state: Path) -> dict[str, Any]:
    done = cli("--state-dir", str(state), "status", "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_it_reports_status_of_an_empty_state_dir_without_touching_it(tmp_path: Path) -> None:
    state = tmp_path / "empty"
    state.mkdir()
    human = cli("--state-dir", str(state), "status")
    assert human.returncode == 0, human.stderr
    assert "not enrolled" in human.stdout and "none (no model installed)" in human.stdout
    assert "local api:  127.0.0.1:8470" in human.stdout
    report = _status_json(state)
    assert report["device_id"] is None and report["active"] is None
    assert report["outbox"] == {"events": None, "telemetry": None}
    assert list(state.iterdir()) == []  # status creates nothing


def test_it_reports_status_from_partial_or_damaged_facts(state: Path) -> None:
    from tinyfleet_agent._internal.outbox import Outbox

    device = {"device_id": "9307dd6d", "server": "https://fleet.example.com", "name": "pi"}
    (state / "device.json").write_text(json.dumps(device))
    events = Outbox(state / "events.sqlite", capacity=10)
    for n in range(2):
        events.put({"batch_id": f"e{n}", "event": {"state": "failed"}})
    # Facts written by older agents or cut short: keys missing, wrong types.
    (state / "status.json").write_text(
        json.dumps(
            {
                "last_attempt": {"result": "failed"},
                "last_check": {},
                "rejected_locally": {"bundle": "intent-r2"},
                "last_periodic_selftest": {"passed": False},
                "metadata_expires": "2030-01-02T00:00:00Z",
            }
        )
    )
    human = cli("--state-dir", str(state), "status")
    assert human.returncode == 0, human.stderr
    assert "9307dd6d (pi) at https://fleet.example.com" in human.stdout
    assert "intent-r1 release 1 version 1.1" in human.stdout
    assert "last try:   unknown bundle failed\n" in human.stdout
    assert "rejected:" in human.stdout and "expires 2030-01-02T00:00:00Z" in human.stdout
    assert "outbox:     events 2, telemetry - pending" in human.stdout
    report = _status_json(state)
    assert report["server"] == "https://fleet.example.com" and report["outbox"]["events"] == 2
    assert report["active"]["version"] == "1.1" and report["previous"] is None
    (state / "status.json").write_text("{not json")
    (state / "device.json").write_text("[]")
    assert _status_json(state)["last_attempt"] is None  # damaged files: reported as unknown


def test_it_reports_the_running_agents_local_api_address(agent: Agent, state: Path) -> None:
    report = _status_json(state)
    assert report["agent_running"] is True and report["local_api"] == agent.address
