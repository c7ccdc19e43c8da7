"""`make demo` end to end: `python -m tinyfleet.demo --once` starts the real server stack
(`tinyfleet.supervise`: gunicorn, Celery worker and beat) on the embedded default (SQLite,
filesystem broker, local files: what `make run` gives a new user), and drives upload ->
export-onnx -> int8 -> publish -> enroll a real agent -> rollout -> prediction through the
public API. A tiny Hugging Face model stands in for MiniLM to keep it quick."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.fixtures.tiny_models import build_tiny_hf_dir


def test_it_runs_the_whole_journey_on_the_embedded_default(tmp_path: Path) -> None:
    hf_dir = build_tiny_hf_dir(tmp_path / "tiny-hf")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "TINYFLEET_"))
    }
    done = subprocess.run(
        [sys.executable, "-m", "tinyfleet.demo", "--once", "--hf-dir", str(hf_dir),
         "--data-dir", str(tmp_path / "demo")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "demo").glob("demo-*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    out = done.stdout
    for step in ("uploading", "export-onnx", "onnx-int8-dynamic", "published bundle",
                 "enrolled device", "prediction from the device: 2 embeddings"):  # fmt: skip
        assert step in out, out
    assert "dashboard" in out and "password" in out
    assert (tmp_path / "demo" / "tinyfleet.sqlite3").exists()  # the embedded default was used
