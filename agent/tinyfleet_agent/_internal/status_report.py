"""What `tinyfleet-agent status` shows, from the state directory alone.

Every fact is optional: a device that never enrolled, never installed, never polled or
whose files are damaged still gets a report (with "unknown"/"none"), never a traceback.
Nothing here creates or changes a file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from .identity import DEVICE_FILE
from .runtime import available_runtimes
from .slots import Slot, SlotStore, read_status

__all__ = ["build_report", "format_report"]

_OUTBOXES = {"events": "events.sqlite", "telemetry": "telemetry.sqlite"}
_MAX_DEVICE_JSON = 64 * 1024


def _describe(slot: Slot | None) -> dict[str, Any] | None:
    if slot is None:
        return None
    m = slot.meta
    return {
        "bundle": m.bundle,
        "release": m.release,
        "model": m.model,
        "version": m.version,
        "slot": slot.name,
        "installed_at": m.installed_at,
        "runtime": m.runtime,
    }


def _device(state_dir: Path) -> dict[str, Any]:
    try:
        with (state_dir / DEVICE_FILE).open("rb") as f:
            data = json.loads(f.read(_MAX_DEVICE_JSON))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _outbox_size(path: Path) -> int | None:
    """Pending items, read-only (None when the outbox does not exist or is unreadable)."""
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2) as db:
            row = db.execute("SELECT COUNT(*) FROM batches").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


def _pid_running(state_dir: Path, pid_file: str) -> bool:
    try:
        os.kill(int((state_dir / pid_file).read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def build_report(state_dir: Path, *, listen: str, pid_file: str, version: str) -> dict[str, Any]:
    store = SlotStore.read_only(state_dir)
    status = read_status(state_dir)
    device = _device(state_dir)
    running = _pid_running(state_dir, pid_file)
    return {
        "state_dir": str(state_dir),
        "agent_running": running,
        "agent_version": version,
        "enrolled": bool(device.get("device_id")),
        "server": device.get("server"),
        "device_id": device.get("device_id"),
        "device_name": device.get("name"),
        "active": _describe(store.active()),
        "previous": _describe(store.previous()),
        # Where the running agent listens (it records the bound address), else the config.
        "local_api": (status.get("listening") if running else None) or listen,
        "update": status.get("update"),
        "last_error": status.get("last_error"),
        "last_attempt": status.get("last_attempt"),
        "last_check": status.get("last_check"),
        "rejected_locally": status.get("rejected_locally"),
        "metadata_expires": status.get("metadata_expires"),
        "metadata_checked_at": status.get("metadata_checked_at"),
        "last_selftest": status.get("last_selftest"),
        "last_periodic_selftest": status.get("last_periodic_selftest"),
        "outbox": {name: _outbox_size(state_dir / f) for name, f in _OUTBOXES.items()},
        "runtimes": available_runtimes(),
        "status": status,
    }


def _slot_line(d: dict[str, Any] | None, empty: str) -> str:
    if not d:
        return empty
    where = f"slot {d.get('slot')}, {d.get('runtime')}, installed {d.get('installed_at')}"
    version = f" version {d['version']}" if d.get("version") else ""
    return f"{d.get('bundle')} release {d.get('release')}{version} ({where})"


def _attempt_line(a: Any) -> str | None:
    if not isinstance(a, dict):
        return None
    line = f"{a.get('bundle') or 'unknown bundle'} {a.get('result') or 'unknown result'}"
    line += f" at {a['at']}" if a.get("at") else ""
    return line + (f": {a['reason']}" if a.get("reason") else "")


def _selftest_line(t: Any) -> str | None:
    if not isinstance(t, dict):
        return None
    verdict = "passed" if t.get("passed") else f"FAILED ({t.get('reason') or 'no reason'})"
    line = f"{t.get('bundle') or 'unknown bundle'} {verdict}"
    line += f", agreement {t['agreement']}" if t.get("agreement") is not None else ""
    return line + (f" at {t['at']}" if t.get("at") else "")


def format_report(r: dict[str, Any]) -> list[str]:
    """Human-readable lines; optional facts are left out when unknown."""
    state = "running" if r["agent_running"] else "stopped"
    lines = [f"state dir:  {r['state_dir']}  (agent {state}, version {r['agent_version']})"]
    if r["enrolled"]:
        lines.append(f"device:     {r['device_id']} ({r['device_name']}) at {r['server']}")
    else:
        lines.append("device:     not enrolled (serve-local only)")
    lines.append("active:     " + _slot_line(r["active"], "none (no model installed)"))
    lines.append("previous:   " + _slot_line(r["previous"], "none"))
    lines.append(f"local api:  {r['local_api']}")
    optional = {
        "last try": _attempt_line(r["last_attempt"]),
        "last poll": _attempt_line({**r["last_check"], "result": r["last_check"].get("outcome")})
        if isinstance(r["last_check"], dict) and r["last_check"].get("outcome")
        else None,
        "rejected": _attempt_line({**r["rejected_locally"], "result": "rejected locally"})
        if isinstance(r["rejected_locally"], dict)
        else None,
        "last error": r["last_error"],
        "metadata": r["metadata_expires"] and f"expires {r['metadata_expires']}",
        "self-test": _selftest_line(r["last_periodic_selftest"]),
    }
    for label, value in optional.items():
        if value:
            lines.append(f"{label + ':':<12}{value}")
    outbox = ", ".join(f"{k} {'-' if v is None else v}" for k, v in r["outbox"].items())
    lines.append(f"outbox:     {outbox} pending")
    runtimes = ", ".join(f"{k} {v}" for k, v in r["runtimes"].items()) or "none installed"
    lines.append(f"runtimes:   {runtimes}")
    return lines
