"""End-to-end helpers: a real agent process, deriving and publishing real versions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

from compression.models import Job, ModelVersion
from fleet.models import Bundle, Rollout
from fleet.rollouts import gates
from fleet.security.publish import request_publish
from fleet.security.publish_worker import run_publish
from tests.conftest import ROOT, wait_for
from tests.fixtures.tiny_models import build_tiny_bert_onnx, build_tiny_hf_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Agent:
    def __init__(self, name: str, state_dir: Path) -> None:
        self.name, self.state_dir, self.port = name, state_dir, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'agent'}",
            "TINYFLEET_AGENT_TELEMETRY_INTERVAL_S": "1",
        }

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tinyfleet_agent.cli",
                "--state-dir",
                str(self.state_dir),
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        # The agent's own words on failure, not just an exit status.
        assert not check or done.returncode == 0, (
            f"agent {' '.join(args[:1])} exited {done.returncode}: {done.stdout}{done.stderr}"
        )
        return done

    def start(self) -> None:
        log = (self.state_dir.parent / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tinyfleet_agent.cli",
                "--state-dir",
                str(self.state_dir),
                "run",
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            return json.loads(r.read())

    def serving(self) -> str | None:
        try:
            return str(self.get("/v1/model").get("bundle"))
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        path = self.state_dir.parent / f"{self.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _text_model_zip(tmp: Path) -> Path:
    """A tiny BERT encoder with a real WordPiece tokenizer, zipped like an upload."""
    folder = tmp / "upload"
    build_tiny_bert_onnx(folder / "model.onnx", hidden=32)
    hf = build_tiny_hf_dir(tmp / "hf")
    (folder / "tokenizer.json").write_bytes((hf / "tokenizer.json").read_bytes())
    archive = tmp / "tiny-embedder.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, file.name)
    return archive


def _derive(
    api: Any, version_id: int, recipe: str, params: dict[str, Any] | None = None
) -> ModelVersion:
    job = api.post(
        "/api/v1/jobs", {"version": version_id, "recipe": recipe, "params": params or {}}
    ).json()
    done = wait_for(lambda: (j := Job.objects.get(pk=job["id"])).is_finished and j, timeout=180)
    assert done.status == "succeeded", (done.error, done.log)
    return ModelVersion.objects.get(pk=done.result_version_id)


def _publish(version: ModelVersion) -> str:
    """Publish; the worker receives the same task, so the two runs race (only one wins)."""
    bundle, _ = request_publish(version, None)
    run_publish(bundle.pk)
    done = wait_for(lambda: (b := Bundle.objects.get(pk=bundle.pk)).status != "publishing" and b)
    assert done.status == "published", done.error
    return str(bundle.pk)


def _settle(rollout_id: int, until: Any, agents: list[Agent], timeout: float = 120) -> Rollout:
    def check() -> Rollout | None:
        gates.step_all()
        rollout = Rollout.objects.get(pk=rollout_id)
        return rollout if until(rollout) else None

    try:
        result: Rollout = wait_for(check, timeout=timeout, interval=1.0)
    except AssertionError:
        raise AssertionError("\n\n".join(a.log() for a in agents)) from None
    return result


def _updater(state_dir: Path, server: str, clock: Any = None) -> Any:
    from tinyfleet_agent._internal.client import DeviceClient
    from tinyfleet_agent._internal.identity import load_or_create_keys
    from tinyfleet_agent._internal.slots import SlotStore
    from tinyfleet_agent._internal.updater import Updater
    from tinyfleet_agent.fleet import load_device

    device, credential = load_device(state_dir)
    updater = Updater(
        client=DeviceClient(server, credential, timeout=10),
        keys=load_or_create_keys(state_dir),
        device_id=device["device_id"],
        store=SlotStore(state_dir),
        state_dir=state_dir,
    )
    if clock is not None:
        updater.clock = clock
    return updater


def _active(updater: Any) -> str | None:
    slot = updater.store.active()
    return slot.meta.bundle if slot else None
