"""Part of `make check-arm64`: a real agent on the emulated arm64 Python, against a real
server on this host, installs a real bundle and answers a prediction.

The server and the bundle come from a `make demo` data dir (`--demo-dir`, default
data/demo; when it holds no demo yet, `python -m tinyfleet.demo --once` builds one
there: MiniLM intent classifier, onnx-int8-auto, published). The server is started on
it again, the arm64 agent enrolls into the demo group, a rollout assigns it the
bundle, and the agent downloads, verifies, decrypts, installs and self-tests it, then
serves it. Prints "OK: ..." on success, "FAILED: ..." otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinyfleet.demo import Api, DemoError, _free_port, _wait, agent_call  # noqa: E402

SENTENCE = "The pump on line 3 is vibrating."


def _demo_ready(demo_dir: Path) -> bool:
    return (demo_dir / "demo.json").is_file()  # written once a demo ran to the end


def _env(demo_dir: Path, port: int) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "TINYFLEET_"))
    }
    return {
        **clean,
        "TINYFLEET_DATA_DIR": str(demo_dir),
        "PORT": str(port),
        "SITE_URL": f"http://127.0.0.1:{port}",
        "TINYFLEET_DEVICE_POLL_INTERVAL": "2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "agent")]),
    }


def run(args: argparse.Namespace, procs: list[subprocess.Popen[bytes]]) -> str:
    demo_dir: Path = args.demo_dir.resolve()
    if not _demo_ready(demo_dir):
        print(f"building a demo in {demo_dir} (python -m tinyfleet.demo --once)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "tinyfleet.demo", "--once", "--data-dir", str(demo_dir)],
            cwd=ROOT, check=True, timeout=3600,
        )  # fmt: skip
    port = _free_port()
    env = _env(demo_dir, port)
    base = env["SITE_URL"]
    log = (args.work / "arm64-server.log").open("ab")
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "tinyfleet.supervise"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    api = Api(base)

    def healthy() -> bool:
        try:
            return api.call("GET", "/healthz")[0] == 200
        except OSError:
            return False

    _wait("the server", healthy, timeout=300)
    api.token = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "demo", "--name", "check-arm64"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    demo = json.loads((demo_dir / "demo.json").read_text())
    bundle = demo["bundle"]
    (group,) = [g for g in api.ok("GET", "/api/v1/groups")["items"] if g["id"] == demo["group"]]
    token = api.ok("POST", "/api/v1/enrollment-tokens", {"group": group["id"]})["token"]
    state = args.work / "agent-state"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    agent = [str(args.agent_python), "-m", "tinyfleet_agent.cli", "--state-dir", str(state)]
    label = group["selector"]
    enrolled = subprocess.run(
        [*agent, "enroll", "--server", base, "--token", token, "--name", "arm64-board",
         "--label", label],
        env=env, capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    if enrolled.returncode != 0:
        raise DemoError(f"the arm64 agent could not enroll: {enrolled.stderr[-800:]}")
    device_id = json.loads(enrolled.stdout)["device_id"]
    facts = api.ok("GET", f"/api/v1/devices/{device_id}").get("facts", {})
    print(f"enrolled arm64 device {device_id}: arch {facts.get('arch')}", flush=True)
    rollout = api.ok(
        "POST",
        "/api/v1/rollouts",
        {"bundle": bundle, "group": group["id"], "waves": [100], "soak_seconds": 0,
         "gates": {"min_devices_reporting": 1}},
    )  # fmt: skip
    print(f"rollout {rollout['id']} of {bundle} to {group['name']}", flush=True)
    agent_port = _free_port()
    agent_log = (args.work / "arm64-agent-run.log").open("ab")
    procs.append(
        subprocess.Popen(
            [*agent, "run", "--listen", f"127.0.0.1:{agent_port}"],
            env={**env, "TINYFLEET_AGENT_MQTT": "off"},
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )

    def serving() -> bool:
        if procs[-1].poll() is not None:
            raise DemoError("the arm64 agent exited; see arm64-agent-run.log")
        try:
            return bool(agent_call(agent_port, "GET", "/v1/model").get("bundle") == bundle)
        except (OSError, ValueError):
            return False

    started = time.monotonic()
    _wait("the arm64 agent to install and serve the bundle", serving, timeout=3600, interval=5)
    print(f"installed in {time.monotonic() - started:.0f} s (emulated)", flush=True)
    answer = agent_call(agent_port, "POST", "/v1/predict", {"inputs": [SENTENCE]})
    output: dict[str, Any] = answer["outputs"][0]
    model = agent_call(agent_port, "GET", "/v1/model")
    return (
        f"OK: the arm64 agent verified, decrypted, installed and self-tested bundle {bundle} "
        f"({model.get('runtime')}) and predicted {output.get('label')!r} "
        f"(confidence {output.get('confidence', 0):.2f}) for {SENTENCE!r}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--agent-python", type=Path, required=True)
    parser.add_argument("--demo-dir", type=Path, default=ROOT / "data" / "demo")
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(run(args, procs), flush=True)
        return 0
    except (DemoError, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
