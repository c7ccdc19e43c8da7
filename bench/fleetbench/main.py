"""The command line: set-up, phases and report in order."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .common import DB_NAME, PG_ADMIN, REPORT
from .fold import fold_scaling
from .load import duplicate_race, run_load, stale_last_seen
from .loadgen import telemetry_template
from .phases import converge, fold_timing, gate_timing, profile_state
from .report import keep_analysis, machine_info, render
from .server import CpuMeter, RssSampler, Server, loadavg
from .setup import build_version, bulk_devices, device_creds, fetch_etags, http_enroll, setup_django


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--http-enroll", type=int, default=40)
    parser.add_argument("--poll-interval", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--procs", type=int, default=3, help="load generator processes")
    parser.add_argument("--conns", type=int, default=6, help="connections per process")
    parser.add_argument("--device-procs", type=int, default=4)
    parser.add_argument("--converge-timeout", type=float, default=300.0)
    parser.add_argument("--redis-db", type=int, default=9)
    parser.add_argument("--no-four-workers", action="store_true")
    parser.add_argument(
        "--fold-workers", type=int, default=2, help="folding processes to compare with one"
    )
    parser.add_argument(
        "--fold-backlog", type=int, default=12000, help="pending batches per fold run"
    )
    parser.add_argument(
        "--telemetry-fold",
        choices=("ingest", "deferred"),
        default="deferred",
        help="TINYFLEET_TELEMETRY_FOLD for the server (deferred: rollups folded afterwards)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    import psycopg
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=args.redis_db)
    if r.dbsize():
        raise SystemExit(f"redis db {args.redis_db} is not empty; pick another --redis-db")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname=%s", (DB_NAME,)).fetchone():
            raise SystemExit(f"database {DB_NAME} exists already; drop it first")
        conn.execute(f"create database {DB_NAME}")

    info = machine_info()
    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="tinyfleet-fleet-bench-"))
    state_root = Path(tempfile.mkdtemp(prefix="tinyfleet-fleet-devices-", dir="/dev/shm"))
    print(f"work dir {work}, device dirs {state_root}, load {load_before}", flush=True)
    env = {
        "TINYFLEET_DATA_DIR": str(work / "data"),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "TINYFLEET_MASTER_KEY": secrets.token_hex(32),
        "TINYFLEET_DEVICE_POLL_INTERVAL": str(args.poll_interval),
        "DJANGO_SETTINGS_MODULE": "tinyfleet.settings",
        "LOG_LEVEL": "WARNING",
        "TINYFLEET_TELEMETRY_FOLD": args.telemetry_fold,
        # Limits so high they never refuse: the limiter's cost is measured, its 429s
        # (40 enrollments a minute from one address, load phases far above a device's
        # real rate) are not what this bench is about.
        "TINYFLEET_ENROLL_RATE_LIMIT": "1000000/m",
        "TINYFLEET_DEVICE_RATE_LIMIT": "1000000/m",
        "TINYFLEET_API_RATE_LIMIT": "1000000/m",
    }
    server = Server(data_dir=work / "data", log=work / "gunicorn.log", extra_env=env)
    sampler = RssSampler(server)
    ctx: dict[str, Any] = {
        "info": info,
        "argv": ["python", "bench/fleet.py", *sys.argv[1:]],
        "load_before": load_before,
        "redis_db": args.redis_db,
        "telemetry_fold": args.telemetry_fold,
        "device_procs": args.device_procs,
        "loads": [],
    }
    ok = False
    try:
        t_bench = time.time()
        server.manage("migrate", "--no-input", "-v", "0")
        server.manage(
            "create_user", "bench", "--role", "operator", "--password", secrets.token_hex()
        )
        api_token = server.manage("create_api_token", "bench", "--name", "fleet-bench")
        assert api_token.startswith("tf_")
        setup_django(env)
        from django.contrib.auth import get_user_model
        from django.utils import timezone

        from fleet.models import Bundle, EnrollmentToken, Group
        from fleet.security.device_metadata import trusted_roots
        from fleet.security.publish import request_publish
        from fleet.security.publish_worker import run_publish

        since = timezone.now()
        trusted_roots()  # keys and roots exist before any worker starts
        version = build_version(work)
        t = time.perf_counter()
        bundle, _ = request_publish(version, None)
        run_publish(bundle.pk)
        publish_s = time.perf_counter() - t
        bundle = Bundle.objects.get(pk=bundle.pk)
        assert bundle.status == "published", bundle.error
        print(f"published {bundle.pk} in {publish_s:.2f} s", flush=True)

        server.start(2)
        sampler.start()
        meter = CpuMeter(server)
        status, group = server.request(
            "POST", "/api/v1/groups", {"name": "bench", "selector": "site=bench"}, api_token
        )
        assert status == 201, group
        status, tok = server.request(
            "POST",
            "/api/v1/enrollment-tokens",
            {"group": group["id"], "max_uses": max(1, args.http_enroll)},
            api_token,
        )
        assert status == 201, tok
        ctx["enroll"] = http_enroll(server, state_root, tok["token"], args.http_enroll)
        print(f"HTTP enrollment: {ctx['enroll']}", flush=True)
        ctx["bulk"] = bulk_devices(
            state_root,
            args.http_enroll,
            args.devices - args.http_enroll,
            EnrollmentToken.objects.get(pk=tok["id"]).pk,
            group["id"],
            server.port,
            args.poll_interval,
        )
        print(f"ORM devices: {ctx['bulk']}", flush=True)
        creds = device_creds(state_root)
        assert len(creds) == args.devices
        first_device = json.loads((sorted(state_root.iterdir())[0] / "device.json").read_text())[
            "device_id"
        ]

        # Devices report only on bundles they were assigned: before the convergence
        # phase assigns it for real, the bench bundle is each device's (ended) previous one.
        from fleet.models import Assignment, Device

        Assignment.objects.bulk_create(
            Assignment(device=d, bundle=bundle, wrapped_key=b"", ended_at=since)
            for d in Device.objects.all()
        )
        template = telemetry_template(bundle.pk)
        ctx["telemetry_bytes"] = len(template.replace("@BATCH@", str(uuid.uuid4())))
        common = dict(procs=args.procs, conns=args.conns, warmup=args.warmup, seconds=args.seconds)

        def load_phases(with_all: bool) -> None:
            etags = fetch_etags(server, creds)
            ctx["loads"].append(
                run_load("1a-304-keepalive", server, meter, sampler, etags, "poll", **common)
            )
            if with_all:
                ctx["loads"].append(
                    run_load(
                        "1b-304-writes-last-seen",
                        server,
                        meter,
                        sampler,
                        etags,
                        "poll",
                        during=stale_last_seen,
                        **common,
                    )
                )
                ctx["loads"].append(
                    run_load(
                        "1c-304-agent-client", server, meter, sampler, etags, "agent", **common
                    )
                )
            ctx["loads"].append(
                run_load(
                    "2-telemetry",
                    server,
                    meter,
                    sampler,
                    etags,
                    "telemetry",
                    template=template,
                    **common,
                )
            )

        print("request phases, 2 workers", flush=True)
        load_phases(True)
        print("gunicorn floor (no Django, no database), 2 workers", flush=True)
        floor = Server(
            data_dir=work / "data",
            log=work / "floor.log",
            extra_env=env,
            app="bench.fleetbench.floor_app:application",
        )
        floor.start(2)
        try:
            etags = fetch_etags(server, creds)
            for name, mode in (("0a-floor-304", "poll"), ("0b-floor-telemetry", "telemetry")):
                ctx["loads"].append(
                    run_load(
                        name,
                        floor,
                        CpuMeter(floor),
                        PhaseLabel(),  # type: ignore[arg-type]
                        etags,
                        mode,
                        template=template,
                        **common,
                    )
                )
        finally:
            floor.stop()
        ctx["dup_race"] = duplicate_race(server.port, creds[-1], template)
        print(f"duplicate telemetry race: {ctx['dup_race']}", flush=True)
        ctx["fold"] = fold_timing() if args.telemetry_fold == "deferred" else None
        if ctx["fold"]:
            print(f"fold of pending batches: {ctx['fold']}", flush=True)
        if args.fold_workers > 1:
            print("fold scaling", flush=True)
            ctx["fold_scaling"] = fold_scaling(env, args.fold_backlog, args.fold_workers)
        print("convergence", flush=True)
        conv = converge(
            server,
            meter,
            sampler,
            state_root,
            bundle,
            float(args.poll_interval),
            args.device_procs,
            args.converge_timeout,
            first_device,
        )
        conv.redis_messages = sum(r.llen(k) for k in r.scan_iter() if r.type(k) == b"list")
        ctx["convergence"] = conv
        print(
            f"  all active {conv.t_all_active_from_assign_start:.1f} s after the first "
            f"assignment; milestones {conv.milestones}; failed {conv.failed_events}",
            flush=True,
        )
        ctx["gates"] = gate_timing(
            get_user_model().objects.get(username="bench"),
            bundle,
            Group.objects.get(pk=group["id"]),
            since,
        )
        print(f"gates: {ctx['gates']}", flush=True)
        etags = fetch_etags(server, creds)
        ctx["profile"] = profile_state(etags, 1000)
        print(
            f"profile: fresh {ctx['profile']['fresh_ms']:.2f} ms, write "
            f"{ctx['profile']['write_ms']:.2f} ms, raw db {ctx['profile']['raw_db_ms']:.2f} ms",
            flush=True,
        )
        if not args.no_four_workers:
            server.stop()
            server.start(4)
            print("request phases, 4 workers", flush=True)
            load_phases(False)
        server.stop()
        sampler.stop()
        ctx["rss"] = {
            "peaks": sampler.peak,
            "master": sampler.master_peak,
            "per_worker": sampler.per_worker_peak,
        }
        ctx["load_after"] = loadavg()
        ctx["elapsed"] = time.time() - t_bench
        log_lines = server.log.read_text(errors="replace").splitlines()
        errors = [
            line
            for line in log_lines
            if "Traceback" in line or "ERROR" in line or "WORKER TIMEOUT" in line
        ]
        kinds: dict[str, int] = {}
        for line in log_lines:
            if re.match(r"^[\w.]+(Error|Exception): ", line):
                kinds[line[:160]] = kinds.get(line[:160], 0) + 1
        ctx["notes"] = [
            f"Whole bench: {ctx['elapsed'] / 60:.1f} min. Publishing the bundle in-process "
            f"(`run_publish`): {publish_s:.2f} s. gunicorn log: {len(errors)} error lines"
            + (f" (first: `{errors[0][:200]}`)" if errors else "")
            + ". Exceptions in the log: "
            + ("; ".join(f"`{k}` x{v}" for k, v in kinds.items()) or "none")
            + ".",
            "",
        ]
        text = keep_analysis(render(ctx), args.report)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
        print(text)
        ok = True
    finally:
        server.stop()
        if sampler.is_alive():
            sampler.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception as exc:
            print(f"closing connections: {exc}", file=sys.stderr)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"drop database if exists {DB_NAME} with (force)")
        r.flushdb()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state_root, ignore_errors=True)
        if not ok:
            print(f"failed; gunicorn log kept in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class PhaseLabel:
    """Stands in for the RSS sampler where only the phase label is set."""

    phase = "idle"
