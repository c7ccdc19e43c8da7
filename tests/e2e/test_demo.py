"""`make demo` end to end: `python -m tinyfleet.demo --once` starts the real server stack
(`tinyfleet.supervise`: gunicorn, Celery worker and beat) on the embedded default (SQLite,
filesystem broker, local files: what `make run` gives a new user), fits the demo intent
classifier, and drives upload -> export-onnx -> int8 -> publish -> three real
agents enrolled -> a canary rollout -> traffic with feedback through the public API,
until the three devices serve the bundle and every chart has data. A tiny BERT stands in
for MiniLM to keep it quick; its random weights cannot meet onnx-int8-auto's fidelity
target (the recipe `make demo` uses on MiniLM), so the test asks for onnx-int8-dynamic."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.fixtures.tiny_models import build_tiny_hf_dir


def test_it_runs_a_living_fleet_of_three_on_the_embedded_default(tmp_path: Path) -> None:
    hf_dir = build_tiny_hf_dir(tmp_path / "tiny-hf")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "CELERY_", "TINYFLEET_"))
    }
    data = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "tinyfleet.demo", "--once", "--hf-dir", str(hf_dir),
         "--data-dir", str(data), "--recipe", "onnx-int8-dynamic"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    logs = "\n".join(p.read_text()[-3000:] for p in data.glob("demo-*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    out = done.stdout
    for step in ("fitting the demo intent classifier", "export-onnx", "onnx-int8-dynamic",
                 "published bundle", "canary wave", "the canary serves the bundle",
                 "all 3 devices serve bundle", "charts have data: 3 devices"):  # fmt: skip
        assert step in out, out
    assert out.count("enrolled device") == 3
    assert "dashboard" in out and "password" in out and "/monitor/?range=1h" in out
    # Every line carries the time since the start, and the total is printed at the end.
    assert re.search(r"^\[demo \d+:\d\d\] starting the server stack", out, re.M), out
    assert re.search(r"ready in +\d+:\d\d", out), out

    # The embedded default was used, and what the charts read is really there.
    db = sqlite3.connect(data / "tinyfleet.sqlite3")
    devices = db.execute("SELECT COUNT(*) FROM fleet_device").fetchone()[0]
    assert devices == 3
    bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM fleet_telemetrybatch")]
    reporting = {b["active_bundle"] for b in bodies if b.get("system", {}).get("disk_free_bytes")}
    assert reporting, "no batch carried device health"
    sections = [s for b in bodies for s in b.get("bundles", [])]
    assert sum(s["requests"] for s in sections) > 0
    assert any(s["feedback"] for s in sections) and any(s["golden"] for s in sections)
    # Every process the demo started is gone (it stops what it starts).
    pid_files = list((data / "demo-agents").glob("*/agent.pid"))
    assert not any(_running(p) for p in pid_files)


def _running(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def test_demo_mode_asks_onnx_int8_auto_for_candidates_it_has() -> None:
    # The demo's short search names candidates; a renamed one would fail the job.
    import argparse

    from compression.pipeline.auto_int8 import DEFAULT_CANDIDATES, AutoInt8Params
    from tinyfleet.demo import DEMO_SEARCH, Demo

    def params(recipe: str, full: bool) -> dict[str, object]:
        args = argparse.Namespace(recipe=recipe, full_search=full, data_dir=Path("unused"), port=1)
        return Demo(args).compress_params()

    short = params("onnx-int8-auto", False)
    assert short == DEMO_SEARCH
    assert set(short["candidates"]) <= {c.name for c in DEFAULT_CANDIDATES}  # type: ignore[arg-type]
    AutoInt8Params(**{**short, "candidates": tuple(short["candidates"])})  # type: ignore[arg-type]
    assert params("onnx-int8-auto", True) == {}
    assert params("onnx-int8-dynamic", False) == {}
