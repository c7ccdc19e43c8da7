"""Rollout start -> devices serving the new bundle, with and without MQTT wake-ups.

    python bench/push.py [--agents 6] [--poll-interval 30] [--mqtt-poll-interval 300]
                         [--wave 10000]

Writes bench/reports/push.md. Everything is real and local: a fresh PostgreSQL database
(`tinyfleet_bench_push`, dropped at the end), gunicorn (1 worker x 4 threads), the
Mosquitto at 127.0.0.1:1883, and `--agents` real `tinyfleet-agent run` processes per mode
(verify, download, decrypt, install, the real golden self-test, switch). The bundle is the
fleet bench's tiny BERT with a real golden set (`bench/fleet.py:build_version`).

Two modes, each with its own group, devices and server process:
- polling: `TINYFLEET_DEVICE_POLL_INTERVAL=--poll-interval`, MQTT off;
- mqtt: `TINYFLEET_DEVICE_POLL_INTERVAL=--mqtt-poll-interval`, `TINYFLEET_MQTT_URL` set,
  agents with `mqtt = "on"`.
Agents start spread over one polling interval (as a real fleet's polls are), then a
rollout (one 100% wave) is created in this process, as the API would, and each agent's
`GET /v1/model` is watched every 50 ms until it serves the new bundle.
Last, the server side alone: one wave of `--wave` wake-ups published on one connection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT / "agent"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _server import Gunicorn, free_port  # noqa: E402  (bench/ is sys.path[0])

REPORT = ROOT / "bench" / "reports" / "push.md"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "tinyfleet_bench_push"
BROKER = "mqtt://127.0.0.1:1883"


class AgentProc:
    def __init__(self, state_dir: Path, mqtt: bool) -> None:
        self.state_dir, self.port = state_dir, free_port()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "agent"),
            "TINYFLEET_AGENT_MQTT": "on" if mqtt else "off",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def _base(self) -> list[str]:
        return [sys.executable, "-m", "tinyfleet_agent.cli", "--state-dir", str(self.state_dir)]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*self._base(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return done.stdout

    def start(self) -> None:
        log = (self.state_dir.parent / f"{self.state_dir.name}.log").open("ab")
        self.proc = subprocess.Popen(
            [*self._base(), "run", "--listen", f"127.0.0.1:{self.port}"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> dict[str, Any]:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as r:
                return dict(json.loads(r.read()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def run_mode(
    name: str, env: dict[str, str], work: Path, args: argparse.Namespace, bundle: Any
) -> dict[str, Any]:
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from fleet.devices import push
    from fleet.models import EnrollmentToken, Group
    from fleet.rollouts import engine as rollouts

    mqtt = name == "mqtt"
    poll = args.mqtt_poll_interval if mqtt else args.poll_interval
    mode_env = {
        **env,
        "TINYFLEET_DEVICE_POLL_INTERVAL": str(poll),
        "TINYFLEET_MQTT_URL": BROKER if mqtt else "",
    }
    settings.MQTT_URL = settings.MQTT_DEVICE_URL = BROKER if mqtt else ""  # this process commits
    server = Gunicorn(
        data_dir=work / "data", log=work / f"gunicorn-{name}.log", extra_env=mode_env, threads=4
    )
    server.start(1)
    agents: list[AgentProc] = []
    try:
        group = Group.objects.create(name=f"bench-{name}", selector=f"site={name}")
        _, token = EnrollmentToken.issue(group)
        for i in range(args.agents):
            agent = AgentProc(work / f"{name}-{i}", mqtt)
            url = f"http://127.0.0.1:{server.port}"
            agent.cli("enroll", "--server", url, "--token", token, "--label", f"site={name}")
            agents.append(agent)
        gap = args.poll_interval / args.agents
        for agent in agents:  # polls spread over an interval, like a fleet's
            agent.start()
            time.sleep(gap)
        if mqtt:
            _wait(lambda: all(a.get("/v1/health").get("push") == "mqtt-subscribed" for a in agents))
        user = get_user_model().objects.get(username="bench")
        started = time.monotonic()
        rollouts.create(user=user, bundle=bundle, group=group, waves=[100], gates={})
        serving: dict[int, float] = {}
        deadline = started + 2 * poll + 120
        while len(serving) < len(agents) and time.monotonic() < deadline:
            for i, agent in enumerate(agents):
                if i not in serving and agent.get("/v1/model").get("bundle") == bundle.pk:
                    serving[i] = time.monotonic() - started
            time.sleep(0.05)
        times = sorted(serving.values())
        return {
            "mode": name,
            "poll": poll,
            "agents": len(agents),
            "converged": len(times),
            "median": statistics.median(times) if times else None,
            "min": times[0] if times else None,
            "max": times[-1] if times else None,
            "wakeups": dict(push.publisher().stats),
        }
    finally:
        for agent in agents:
            agent.stop()
        server.stop()


def publish_rate(devices: int, runs: int = 3) -> dict[str, float]:
    """`push.publish_wakeups` for one wave of `devices` topics on one connection (QoS 1,
    every PUBACK awaited), against the local Mosquitto; median of `runs`."""
    import uuid

    from fleet.devices import push

    broker = push.Broker("127.0.0.1", 1883, False, None, None, None)
    ids = [str(uuid.uuid4()) for _ in range(devices)]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        acked = push.publish_wakeups(broker, ids)
        times.append(time.perf_counter() - started)
        assert acked == devices, f"{acked} of {devices} acknowledged"
    median = statistics.median(times)
    return {"devices": devices, "median_s": median, "per_s": devices / median}


def _wait(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError("agents did not subscribe to their MQTT topics")


def render(
    results: list[dict[str, Any]], rate: dict[str, float], argv: list[str], took: float
) -> str:
    rows = [
        f"| {r['mode']} | {r['poll']} s | {r['converged']}/{r['agents']} | "
        f"**{r['median']:.2f} s** | {r['min']:.2f} s | {r['max']:.2f} s |"
        for r in results
        if r["median"] is not None
    ]
    return "\n".join(
        [
            "# Push bench: rollout start to devices serving, with and without MQTT",
            "",
            f"Generated by `{' '.join(argv)}` on {time.strftime('%Y-%m-%d %H:%M UTC')}"
            f" ({took / 60:.1f} min). Machine: {platform.machine()}, {os.cpu_count()} cores "
            f"(shared with other jobs: load average before {_load()}), Python "
            f"{platform.python_version()}, Mosquitto at 127.0.0.1:1883. One run.",
            "",
            "| mode | device poll interval | serving | median | fastest | slowest |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Time from `rollouts.create` (one 100% wave) until each real agent process's "
            "`GET /v1/model` names the new bundle: assignment signing, the agent's poll, "
            "metadata verification, download, decrypt, install, golden self-test and switch.",
            f"Wake-up counters in the committing process: {results[-1]['wakeups']}.",
            "",
            f"Publishing one wave of {rate['devices']:,} wake-ups (`push.publish_wakeups`: one "
            f"connection, QoS 1, every PUBACK awaited) to the local Mosquitto: "
            f"**{rate['median_s']:.2f} s, {rate['per_s']:,.0f} wake-ups/s** (median of 3).",
            "",
            "Without MQTT a device learns of the assignment at its next poll, so the wait is "
            "spread over one (jittered) poll interval; with MQTT every device is woken when the "
            "wave commits and the time left is the install itself, even with polls 10x rarer.",
            "",
        ]
    )


def _load_fleet_bench() -> Any:
    # bench/fleet.py cannot be imported as `fleet`: that name is the Django app.
    import importlib.util

    spec = importlib.util.spec_from_file_location("fleet_bench", ROOT / "bench" / "fleet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--poll-interval", type=int, default=30)
    parser.add_argument("--mqtt-poll-interval", type=int, default=300)
    parser.add_argument("--wave", type=int, default=10_000, help="wake-ups in the publish run")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()

    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname=%s", (DB_NAME,)).fetchone():
            raise SystemExit(f"database {DB_NAME} exists already; drop it first")
        conn.execute(f"create database {DB_NAME}")
    work = Path(tempfile.mkdtemp(prefix="tinyfleet-push-bench-"))
    env = {
        "TINYFLEET_DATA_DIR": str(work / "data"),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "TINYFLEET_MASTER_KEY": secrets.token_hex(32),
        "DJANGO_SETTINGS_MODULE": "tinyfleet.settings",
        "LOG_LEVEL": "WARNING",
    }
    started = time.monotonic()
    try:
        setup = Gunicorn(data_dir=work / "data", log=work / "manage.log", extra_env=env)
        setup.manage("migrate", "--no-input", "-v", "0")
        setup.manage("create_user", "bench", "--role", "operator", "--password", "x" * 20)
        fleet_bench = _load_fleet_bench()
        fleet_bench.setup_django(env)
        from fleet.security.device_metadata import trusted_roots
        from fleet.security.publish import request_publish
        from fleet.security.publish_worker import run_publish

        trusted_roots()
        bundle, _ = request_publish(fleet_bench.build_version(work), None)
        run_publish(bundle.pk)
        bundle.refresh_from_db()
        results = [run_mode(mode, env, work, args, bundle) for mode in ("polling", "mqtt")]
        rate = publish_rate(args.wave)
        for r in [*results, rate]:
            print(r, flush=True)
        argv = ["python", "bench/push.py", *sys.argv[1:]]
        args.report.write_text(render(results, rate, argv, time.monotonic() - started))
        print(f"wrote {args.report}")
    finally:
        from django.db import connections

        if "django.contrib.auth" in sys.modules:  # django was set up: free the database
            connections.close_all()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"drop database if exists {DB_NAME} with (force)")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
