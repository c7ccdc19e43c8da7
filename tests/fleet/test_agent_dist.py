"""The server hands out its agent as a wheel, building it on first use when `make
install` did not (real pip, real setuptools)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from django.test import Client

from fleet.agent_dist import WHEEL_NAME


def test_it_builds_the_agent_wheel_on_first_request_and_serves_it_without_login(
    client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.AGENT_WHEEL_DIR = tmp_path / "not-built"
    settings.DATA_DIR = tmp_path / "data"
    settings.TMP_DIR = tmp_path / "data" / "tmp"
    settings.TMP_DIR.mkdir(parents=True)
    response = client.get(f"/agent/{WHEEL_NAME}")
    assert response.status_code == 200
    wheel = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    names = set(wheel.namelist())
    assert {"tinyfleet_agent/cli.py", "tinyfleet_agent/_internal/client.py"} <= names
    assert not any(name.startswith(("build/", "tests/")) for name in names)
    assert (tmp_path / "data" / "agent-wheel" / WHEEL_NAME).is_file()  # cached
    assert list(settings.TMP_DIR.iterdir()) == []  # the build folder is gone


def test_it_names_the_right_file_for_any_other_name(client: Client) -> None:
    response = client.get("/agent/tinyfleet_agent-9.9.9-py3-none-any.whl")
    assert response.status_code == 404
    assert WHEEL_NAME in response.json()["error"]
