"""Settings helpers fail loudly on bad values; .env.example lists every variable read."""

from __future__ import annotations

import multiprocessing
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.config import BROKER_VISIBILITY_MARGIN_S, read_or_create_secret
from core.env import env_bool, env_int, env_size, env_str

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2G", 2 * 1024**3), ("512M", 512 * 1024**2), ("1048576", 1048576), ("1.5k", 1536)],
)
def test_env_size_parses_units(monkeypatch: pytest.MonkeyPatch, raw: str, expected: int) -> None:
    monkeypatch.setenv("X_SIZE", raw)
    assert env_size("X_SIZE", 1) == expected


@pytest.mark.parametrize(
    ("reader", "raw"), [(env_size, "lots"), (env_size, "-1"), (env_int, "ten"), (env_bool, "maybe")]
)
def test_bad_values_fail_loudly(monkeypatch: pytest.MonkeyPatch, reader: object, raw: str) -> None:
    monkeypatch.setenv("X_BAD", raw)
    with pytest.raises(ImproperlyConfigured, match="X_BAD"):
        reader("X_BAD", 1)  # type: ignore[operator]


def test_env_str_reads_a_file_variant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("from-file\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert env_str("X_SECRET") == "from-file"
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="X_SECRET_FILE"):
        env_str("X_SECRET")


def test_env_example_lists_every_variable_the_code_reads() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M))
    read = set()
    for path in [
        ROOT / "tinyfleet" / "settings.py",
        ROOT / "tinyfleet" / "supervise.py",
        *(ROOT / "accounts").rglob("*.py"),
    ]:
        read |= set(re.findall(r'env_\w+\(\s*"([A-Z][A-Z0-9_]+)"', path.read_text()))
        read |= set(re.findall(r'os\.environ\.get\(\s*"([A-Z][A-Z0-9_]+)"', path.read_text()))
    read -= {"DJANGO_SETTINGS_MODULE"}
    assert read <= documented, f"missing from .env.example: {sorted(read - documented)}"


def test_an_unknown_telemetry_fold_mode_stops_the_server_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TINYFLEET_TELEMETRY_FOLD": "later", "TINYFLEET_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={**env, "DJANGO_SETTINGS_MODULE": "tinyfleet.settings"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode != 0 and "TINYFLEET_TELEMETRY_FOLD must be" in done.stderr


def _fresh_settings(tmp_path: Path, env: dict[str, str], expression: str) -> str:
    """`expression` evaluated against the settings a new process loads with `env`."""
    import os
    import subprocess
    import sys

    base = {**os.environ, "TINYFLEET_DATA_DIR": str(tmp_path), **env}
    done = subprocess.run(
        [sys.executable, "-c", f"from django.conf import settings; print({expression})"],
        env={**base, "DJANGO_SETTINGS_MODULE": "tinyfleet.settings"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("limit", [60, 3 * 3600, 10 * 3600])
def test_it_derives_the_redis_visibility_timeout_from_the_job_time_limit(
    tmp_path: Path, limit: int
) -> None:
    # Loading settings does not connect: the broker URL only selects the transport options.
    out = _fresh_settings(
        tmp_path,
        {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/1", "TINYFLEET_JOB_TIME_LIMIT": str(limit)},
        "settings.CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'], "
        "settings.CELERY_TASK_TIME_LIMIT",
    )

    timeout, task_limit = (int(n) for n in out.split())
    assert task_limit == limit
    # Redis must never redeliver a job that may still be running (it would run twice).
    assert timeout == limit + BROKER_VISIBILITY_MARGIN_S
    assert BROKER_VISIBILITY_MARGIN_S >= 600


def test_it_writes_the_generated_secret_key_once_whole_and_private(tmp_path: Path) -> None:
    key = _fresh_settings(tmp_path, {"SECRET_KEY": ""}, "settings.SECRET_KEY")

    key_file = tmp_path / "secret_key"
    assert len(key) >= 50 and key_file.read_text() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert _fresh_settings(tmp_path, {"SECRET_KEY": ""}, "settings.SECRET_KEY") == key
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".secret_key")]


def _start_with(barrier: Any, results: Any, key_file: Path) -> None:
    barrier.wait()
    results.put(read_or_create_secret(key_file))


def test_it_gives_processes_starting_together_one_secret(tmp_path: Path) -> None:
    # Real processes released at once on a fresh data dir, as `make run` starts its
    # web server, worker and beat: every one must end up with the same key. A race is
    # not hit every time, so several fresh directories are tried.
    ctx = multiprocessing.get_context("fork")
    for attempt in range(10):
        data_dir = tmp_path / str(attempt)
        data_dir.mkdir()
        key_file = data_dir / "secret_key"
        barrier, results = ctx.Barrier(8), ctx.Queue()

        def start(
            key_file: Path = key_file, barrier: Any = barrier, results: Any = results
        ) -> None:
            barrier.wait()
            results.put(read_or_create_secret(key_file))

        procs = [ctx.Process(target=start) for _ in range(8)]
        for proc in procs:
            proc.start()
        keys = {results.get(timeout=60) for _ in procs}
        for proc in procs:
            proc.join(timeout=60)

        assert keys == {key_file.read_text()}
        assert [p.name for p in data_dir.iterdir()] == ["secret_key"]  # no temporary files
