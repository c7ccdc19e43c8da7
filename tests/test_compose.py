"""docker-compose.yml parses with docker-compose (no engine needed) and configures its
services with the same settings names the code reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_valid_and_uses_known_settings(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose (Debian package) is needed: ./scripts/system-deps.sh installs it"
    (tmp_path / "secret_key.txt").write_text("x")  # compose checks that secret files exist
    result = subprocess.run(
        [
            binary,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--project-directory",
            str(tmp_path),
            "config",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert {"postgres", "redis", "minio", "web", "worker", "beat"} <= set(config["services"])
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    for name in ("web", "worker", "beat"):
        env = config["services"][name]["environment"]
        unknown = {k.removesuffix("_FILE") for k in env} - documented
        assert not unknown, f"{name} uses settings the code does not read: {unknown}"
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("redis://")
