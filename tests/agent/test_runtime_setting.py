"""The agent's `runtimes` setting: use only some of the installed runtimes. The server
picks each device's bundle variant from the runtimes it reports, so this is how an
operator says "this device runs onnxruntime only" (and how end-to-end tests make two
agents on one machine look like different hardware)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tinyfleet_agent._internal.runtime import (
    UnsupportedRuntimeError,
    available_runtimes,
    check_runtime,
    restrict_runtimes,
)
from tinyfleet_agent.config import ConfigError, load_config

AGENT = Path(__file__).resolve().parents[2] / "agent"


@pytest.fixture
def restricted() -> Iterator[None]:
    yield
    restrict_runtimes(None)  # the setting is process-wide: never leak it into other tests


def status(state: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyfleet_agent.cli",
            "--state-dir",
            str(state),
            "status",
            "--json",
        ],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(AGENT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_reports_only_the_runtimes_it_is_told_to_use(tmp_path: Path) -> None:
    everything = json.loads(status(tmp_path).stdout)["runtimes"]
    assert {"onnxruntime", "litert"} <= set(everything)  # both are installed here
    only = json.loads(status(tmp_path, TINYFLEET_AGENT_RUNTIMES="litert").stdout)["runtimes"]
    assert only == {"litert": everything["litert"]}


def test_it_refuses_an_unknown_runtime_name(tmp_path: Path) -> None:
    result = status(tmp_path, TINYFLEET_AGENT_RUNTIMES="onnxruntime,tensorflow")
    assert result.returncode != 0
    assert "unknown runtime(s) ['tensorflow']" in result.stderr


def test_it_refuses_to_load_a_runtime_it_is_told_not_to_use(restricted: None) -> None:
    assert check_runtime("litert")
    restrict_runtimes(["onnxruntime"])
    assert list(available_runtimes()) == ["onnxruntime"]
    with pytest.raises(UnsupportedRuntimeError, match="disabled by the runtimes setting"):
        check_runtime("litert")
    assert check_runtime("onnxruntime", "1.17")


def test_it_reads_the_setting_from_env_and_file(tmp_path: Path) -> None:
    env = {"TINYFLEET_AGENT_RUNTIMES": " onnxruntime , litert,onnxruntime"}
    assert load_config(env=env, cli={"state_dir": tmp_path}).runtimes == ("onnxruntime", "litert")
    assert load_config(env={}, cli={"state_dir": tmp_path}).runtimes is None
    (tmp_path / "agent.toml").write_text('runtimes = ["litert"]\n')
    assert load_config(env={}, cli={"state_dir": tmp_path}).runtimes == ("litert",)
    (tmp_path / "agent.toml").write_text("runtimes = 3\n")
    with pytest.raises(ConfigError, match="runtimes"):
        load_config(env={}, cli={"state_dir": tmp_path})
