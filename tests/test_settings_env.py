"""Settings helpers fail loudly on bad values; .env.example lists every variable read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

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
