"""manage.py run against a data dir that holds no database says which database it looked
at, instead of a traceback ending in "no such table: auth_user"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_it_names_the_database_a_command_found_empty(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["TINYFLEET_DATA_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert str(tmp_path / "tinyfleet.sqlite3") in done.stderr
    assert f"TINYFLEET_DATA_DIR={tmp_path}" in done.stderr and "manage.py migrate" in done.stderr
    assert "Traceback" not in done.stderr
