"""Shared imports, paths and constants of the fleet bench (bench/fleet.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import ROOT

REPORT = ROOT / "bench" / "reports" / "fleet.md"
BIN = Path(sys.executable).parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# A database of its own, created and dropped by the bench (TINYFLEET_BENCH_DB to share
# the PostgreSQL server with others safely).
DB_NAME = os.environ.get("TINYFLEET_BENCH_DB", "tinyfleet_bench")
API = "/api/device/v1"
RSS_SAMPLE_S = 0.1
ANALYSIS_START = "<!-- analysis:start (hand-written, kept across runs: re-check it) -->"
ANALYSIS_END = "<!-- analysis:end -->"
