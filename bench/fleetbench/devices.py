"""Device-side children: simulated update loops."""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

from tinyfleet_agent._internal.client import DeviceClient
from tinyfleet_agent._internal.identity import load_or_create_keys
from tinyfleet_agent._internal.slots import SlotStore
from tinyfleet_agent._internal.updater import Updater


class SimUpdater(Updater):
    """The agent's Updater with the golden self-test's inference stubbed out.

    Everything before it (poll, metadata, verification, download, unwrap, decrypt,
    extract with the golden digest check) and after it (atomic slot switch, release
    floor, events) is the real code."""

    def _self_test(self, directory: Path, assignment: Any) -> None:
        self.report("self-test", assignment.record.bundle_id)
        self._health(last_selftest={"passed": True, "stubbed": True})

    def check_once(self) -> str:
        start = time.time()
        result = super().check_once()
        self.sim_log.append((start, time.time(), result))  # type: ignore[attr-defined]
        return result


class RealUpdater(Updater):
    def check_once(self) -> str:
        start = time.time()
        result = super().check_once()
        self.sim_log.append((start, time.time(), result))  # type: ignore[attr-defined]
        return result


def _device_proc(
    port: int,
    dirs: list[str],
    poll: float,
    real_selftest: list[str],
    stop: Any,
    out: Any,
) -> None:
    """One process of simulated devices: a thread per device running Updater.run."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    server = f"http://127.0.0.1:{port}"
    stop_local = threading.Event()
    updaters: list[tuple[str, Updater, list[str]]] = []
    for d in dirs:
        state_dir = Path(d)
        device = json.loads((state_dir / "device.json").read_text())
        credential = (state_dir / "credential").read_text().strip()
        health: list[str] = []
        cls = RealUpdater if device["device_id"] in real_selftest else SimUpdater
        updater = cls(
            client=DeviceClient(server, credential),
            keys=load_or_create_keys(state_dir),
            device_id=device["device_id"],
            store=SlotStore(state_dir),
            state_dir=state_dir,
            threads=1,
            poll_interval=poll,
            on_health=lambda _h=health, **v: _h.append(str(v.get("update", ""))),
        )
        updater.sim_log = []  # type: ignore[attr-defined]
        updaters.append((device["device_id"], updater, health))
    threads = []
    gap = poll / max(1, len(updaters))
    for _, updater, _ in updaters:  # staggered like a real fleet, not a thundering herd
        t = threading.Thread(target=updater.run, args=(stop_local,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(gap)
    while not all(u.sim_log for _, u, _ in updaters):  # type: ignore[attr-defined]
        time.sleep(0.05)
    out.put(("ready", os.getpid(), len(updaters)))
    stop.wait()
    stop_local.set()
    for t in threads:
        t.join(timeout=30)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    results = []
    for device_id, updater, health in updaters:
        log = updater.sim_log  # type: ignore[attr-defined]
        installed = [(s, e) for s, e, r in log if r == "installed"]
        results.append(
            {
                "device": device_id,
                "checks": len(log),
                "outcomes": sorted({r for _, _, r in log}),
                "installed": installed[0] if installed else None,
                "health": sorted(set(health) - {"idle", ""}),
                "failed": dict(updater.failed),
            }
        )
    out.put(("done", os.getpid(), results, ru.ru_utime + ru.ru_stime))
