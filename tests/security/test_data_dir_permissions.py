"""Finding 7: on the embedded default the data dir is 0700 and the database, keys and
artifacts are 0600, even under a permissive umask and for an install made before this
rule (real `manage.py` processes on a fresh data dir)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

STORE = (
    "from django.core.files.base import ContentFile;"
    "from django.core.files.storage import default_storage;"
    "print(default_storage.path(default_storage.save('models/ab/m.onnx', ContentFile(b'x'))))"
)


def _manage(data_dir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"TINYFLEET_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "tinyfleet.settings"}
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=lambda: os.umask(0o022),  # what a default shell gives
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_it_keeps_the_embedded_data_private_to_its_owner(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _manage(data, "migrate", "--no-input", "-v", "0")
    artifact = Path(_manage(data, "shell", "-c", STORE).strip().splitlines()[-1])
    assert _mode(data) == 0o700
    assert _mode(data / "tinyfleet.sqlite3") == 0o600
    assert _mode(data / "secret_key") == 0o600
    assert _mode(artifact) == 0o600 and _mode(artifact.parent) == 0o700


def test_it_tightens_an_install_made_before_the_rule(tmp_path: Path) -> None:
    data = tmp_path / "old"
    _manage(data, "migrate", "--no-input", "-v", "0")
    data.chmod(0o755)
    (data / "tinyfleet.sqlite3").chmod(0o644)
    _manage(data, "check")
    assert _mode(data) == 0o700
    assert _mode(data / "tinyfleet.sqlite3") == 0o600
