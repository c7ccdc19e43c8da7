"""Fleet simulator, the package behind `python bench/fleet.py`: many device update loops
against gunicorn + PostgreSQL + Redis.

    python bench/fleet.py [--devices 1000] [--http-enroll 40] [--poll-interval 5]
                          [--seconds 15] [--no-four-workers]

Writes bench/reports/fleet.md. Everything runs on this machine and talks to 127.0.0.1 only.

Set-up: a fresh PostgreSQL database (`tinyfleet_bench`, dropped at the end), an unused
Redis database as the Celery broker (db 9 by default, must be empty, flushed at the end),
a temporary TINYFLEET_DATA_DIR, `manage.py migrate`, an operator and an API token from the
management commands, then gunicorn (gthread, 2 workers x 8 threads, the MALLOC_*
environment of `tinyfleet/supervise.py`). A group and an enrollment token come from the
operator API; `--http-enroll` devices enroll through the real endpoint with the agent's own
`tinyfleet_agent.fleet.enroll` (keys generated, proof signed, roots stored), the rest are
created with the Django ORM in this process (real Ed25519/X25519 keys, credential digests,
the same on-device files the agent writes at enrollment).

Phases (medians and rates over a timed window after a warm-up):
1a. unchanged desired-state polls (304 with If-None-Match), keep-alive `http.client`
    connections from several processes;
1b. the same while every poll also writes `last_seen_at` (what happens in production,
    where a device polls less often than LAST_SEEN_WRITE_INTERVAL);
1c. the same 304 polls made with the real agent client (`DeviceClient.state`, urllib,
    one TCP connection per request, as devices do);
2.  telemetry batches (the agent's `Telemetry.snapshot_and_reset()` body, unique batch_id);
3.  convergence: a real bundle (tiny BERT ONNX + tokenizer + a real golden set computed
    with onnxruntime) is published in this process (`request_publish` + `run_publish`),
    N update loops (the real `Updater` with the real `DeviceClient`: poll, metadata,
    `tuf_verify`, download, HPKE unwrap, decrypt, install to A/B slots, events) are
    started, then `director.assign` signs N director targets here (as a Celery worker
    would), and the time until every device reported "active" is taken from the
    DeviceEvent rows. Only the golden self-test's inference is stubbed, and only in the
    simulator (`SimUpdater._self_test`); device 0 runs the unmodified Updater, real
    self-test included, as a check that the golden set is real.
4.  server RSS: summed VmRSS of the gunicorn workers, sampled every 100 ms.
5.  rollout engine on the same data: `rollouts.create` (apply_wave over N devices) and
    `gates.evaluate` over the telemetry ingested in phase 2.
6.  a small in-process profile of the 304 path (django.test.Client + cProfile).
Then phases 1a and 2 again with 4 gunicorn workers (skip with --no-four-workers).
0a/0b. the same poll and telemetry load against gunicorn serving a WSGI app with no
    Django and no database (fleetbench/floor_app.py): the floor under 1a and 2.
Fold scaling: equal backlogs of pending batches folded by 1 and by --fold-workers
    separate processes (1, N, 1, N), rate and CPU per batch (fleetbench/fold.py).

Modules: devices (simulated update loops), loadgen (load generator children), server
(gunicorn, CPU and RSS meters), setup, load (request phases), phases (convergence, gates,
profile), fold, report, main. `TINYFLEET_BENCH_DB` names the bench's database.

CPU accounting per phase: gunicorn workers and PostgreSQL backends of the bench database
(utime+stime from /proc), the load generators (getrusage), and the whole machine
(/proc/stat), so per-core figures can be derived even on a shared machine.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# The repository first (its `fleet` is the Django app), then the agent; bench/ itself is
# on the path as the launcher's directory (for `_server`).
for _p in (str(ROOT / "bench"), str(ROOT / "agent"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
