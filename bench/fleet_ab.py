"""Server CPU per request, before and after the device fast paths, side by side.

    python bench/fleet_ab.py [--devices 200] [--requests 6000] [--rounds 6]

Writes bench/reports/fleet_ab.md. One process, no HTTP server: WSGI calls straight into
tinyfleet's application on PostgreSQL (database `TINYFLEET_BENCH_DB`, default
`tinyfleet_ab`, created and dropped here), so gunicorn and the network are out of the
picture and both variants see the same machine load: rounds alternate between them.

* "before": what the server did until this change, still reachable in the code:
  unchanged polls answered by the `DeviceStateFastPath` middleware behind Django's
  handler with client-side parameter binding (`DATABASE_PREPARED_STATEMENTS=false`);
  deferred telemetry through django-ninja's view and the ORM.
* "after": `tinyfleet.wsgi.application` as gunicorn loads it: polls and telemetry
  answered by fleet/api/fastpath.py before Django's handler, one prepared statement each.

CPU = this process's CPU time + the CPU time of every PostgreSQL backend of the
database (from /proc), per request.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT / "agent"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

REPORT = ROOT / "bench" / "reports" / "fleet_ab.md"
DB = os.environ.get("TINYFLEET_BENCH_DB", "tinyfleet_ab")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg_cpu(seen: dict[str, float]) -> float:
    """Summed CPU seconds of the database's backends (exited ones keep their last value)."""
    prefix = f"postgres: 15/main: postgres {DB} ".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(prefix):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return sum(seen.values())


def telemetry_body() -> str:
    from tinyfleet_agent._internal.telemetry import Telemetry

    telemetry = Telemetry(agent_version="0.1.0")
    telemetry.set_bundle("b-ab", load_ms=40.0)
    rng = random.Random(7)
    for _ in range(25):
        telemetry.record_request("b-ab", rng.uniform(3, 40), [rng.randint(5, 60)], [0.8])
    telemetry.record_error("b-ab", "bad-request")
    telemetry.record_feedback("b-ab", "ok", "ok")
    telemetry.record_golden("b-ab", True, 1.0)
    body = telemetry.snapshot_and_reset()
    body["batch_id"] = "@BATCH@"
    return json.dumps(body)


def call(
    app: Any, method: str, path: str, credential: str, etag: str = "", body: bytes = b""
) -> str:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "HTTP_HOST": "127.0.0.1:8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": f"Bearer {credential}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
    }
    if etag:
        environ["HTTP_IF_NONE_MATCH"] = etag
    status: list[str] = []
    result = app(environ, lambda s, h, e=None: status.append(s))
    b"".join(result)
    if hasattr(result, "close"):
        result.close()
    return status[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"drop database if exists {DB} with (force)")
        conn.execute(f"create database {DB}")
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB}",
        DJANGO_SETTINGS_MODULE="tinyfleet.settings",
        TINYFLEET_TELEMETRY_FOLD="deferred",
        LOG_LEVEL="ERROR",
    )
    os.environ.setdefault("TINYFLEET_DATA_DIR", str(Path("/tmp") / f"tinyfleet-ab-{os.getpid()}"))
    os.environ.pop("CELERY_BROKER_URL", None)
    try:
        report = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"drop database if exists {DB} with (force)")
    REPORT.write_text(report)
    print(report)


def _assign_bench_bundle() -> None:
    """A bundle row `b-ab` (never published: the requests measured only check the
    assignment) assigned, as a previous bundle, to every device."""
    from django.utils import timezone

    from compression.models import ModelVersion, RegisteredModel
    from fleet.models import Assignment, Bundle, Device

    model = RegisteredModel.objects.create(name="ab", task="text-embedding")
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        format="onnx",
        storage_key="unused",
        original_filename="model.onnx",
        size_bytes=1,
        sha256="0" * 64,
    )
    bundle = Bundle.objects.create(
        id="b-ab", version=version, model="ab", release=1, target_name="b-ab"
    )
    ended = timezone.now()
    Assignment.objects.bulk_create(
        Assignment(device=d, bundle=bundle, wrapped_key=b"", ended_at=ended)
        for d in Device.objects.all()
    )


def run(args: argparse.Namespace) -> str:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    import fleet.api.device_api as device_api
    import fleet.rollout_tasks as rollout_tasks
    from fleet.devices.state import unchanged_state_etag
    from fleet.models import Device
    from fleet.models.devices import digest
    from fleet.telemetry import fastpath
    from tinyfleet.wsgi import _django, application

    # No broker here; both paths nudge at most once per 5 s anyway.
    rollout_tasks.nudge = device_api.nudge = lambda: None  # type: ignore[assignment]
    creds = ["tfd_" + secrets.token_urlsafe(32) for _ in range(args.devices)]
    Device.objects.bulk_create(
        Device(
            name=f"ab-{i}",
            identity_public_key=secrets.token_hex(32),
            encryption_public_key=secrets.token_hex(32),
            credential_digest=digest(c),
            labels={"site": "ab"},
        )
        for i, c in enumerate(creds)
    )
    _assign_bench_bundle()  # devices report only on bundles they were assigned
    etags = []
    for c in creds:
        assert call(application, "GET", "/api/device/v1/state", c).startswith("200")
        etags.append(unchanged_state_etag(digest(c)))
    template = telemetry_body()
    real_wants = fastpath.wants

    def before() -> None:
        settings.DATABASE_PREPARED_STATEMENTS = False
        fastpath.wants = lambda meta: False  # type: ignore[assignment]

    def after() -> None:
        settings.DATABASE_PREPARED_STATEMENTS = True
        fastpath.wants = real_wants  # type: ignore[assignment]

    apps = {"before": _django, "after": application}
    setups: dict[str, Callable[[], None]] = {"before": before, "after": after}
    n = len(creds)

    def poll(app: Any, i: int) -> None:
        assert call(app, "GET", "/api/device/v1/state", creds[i % n], etags[i % n]).startswith(
            "304"
        )

    def telemetry(app: Any, i: int) -> None:
        body = template.replace("@BATCH@", str(uuid.uuid4())).encode()
        status = call(app, "POST", "/api/device/v1/telemetry", creds[i % n], body=body)
        assert status.startswith("202"), status

    results: dict[str, dict[str, list[float]]] = {}
    seen: dict[str, float] = {}
    for name, fn, requests in (
        ("poll", poll, args.requests),
        ("telemetry", telemetry, args.requests // 3),
    ):
        per_round = max(1, requests // args.rounds)
        for variant in ("before", "after"):  # warm both
            setups[variant]()
            for i in range(50):
                fn(apps[variant], i)
        acc: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for variant in order:
                setups[variant]()
                app, c0, p0 = apps[variant], time.process_time(), pg_cpu(seen)
                for i in range(per_round):
                    fn(app, i)
                cpu = time.process_time() - c0 + pg_cpu(seen) - p0
                acc[variant].append(1000 * cpu / per_round)
        after()
        results[name] = acc
    return render(results, args)


def render(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Fleet server: CPU per request before and after the fast paths",
        "",
        "Generated by `python bench/fleet_ab.py` "
        f"(`--devices {args.devices} --requests {args.requests} --rounds {args.rounds}`), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average after {load} on the shared "
        "2-core machine (see bench/reports/fleet.md for the machine).",
        "",
        "In-process WSGI calls on PostgreSQL, rounds alternating between the variants; CPU "
        "is this process plus the database's PostgreSQL backends, median of the rounds "
        "(ms per request). No gunicorn or network: add gunicorn's own cost "
        "(bench/reports/fleet.md, `0a`/`0b` floor phases) for a served request.",
        "",
        "| request | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("poll", "unchanged poll (304)"),
        ("telemetry", "telemetry batch (202, deferred)"),
    ):
        b = statistics.median(results[name]["before"])
        a = statistics.median(results[name]["after"])
        lines.append(f"| {label} | {b:.3f} ms | {a:.3f} ms | **{a / b:.2f}x** |")
    lines += ["", "Per round (ms per request):", ""]
    for name in results:
        for variant in ("before", "after"):
            rounds = ", ".join(f"{x:.3f}" for x in results[name][variant])
            lines.append(f"- {name}, {variant}: {rounds}")
    lines += ["", "## Method", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
