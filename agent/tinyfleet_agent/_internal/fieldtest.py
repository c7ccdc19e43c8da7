"""Periodic in-field golden self-tests of the active bundle.

Every `selftest_interval_s` a background thread runs the active bundle's golden set
again, on the model that serves requests: the runtime, the hardware and the files can
change under an installed model (a runtime upgrade, a failing disk, thermal throttling
gone wrong), and the rollout gates want in-field agreement, not only install-time.

It never holds predictions up for long: the thread runs at low CPU priority (nice +10,
Linux per-thread), runs one golden input at a time, each in one of the local API's
compute slots like a request, and pauses between inputs so queued requests go first.
A result is recorded in telemetry (`golden.runs / failed / min_agreement /
last_agreement`, which fleet/telemetry/evidence.py reads for the golden-agreement gate); a failure
is also reported as a `selftest-failed` event and, only if `selftest_rollback` is set,
rolls the device back to its previous install (as `tinyfleet-agent rollback` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .selftest import SelfTestResult, run_golden_selftest
from .slots import SlotError, SlotStore, write_status
from .updater import events_outbox, queue_event, reject_locally

UTC = timezone.utc  # datetime.UTC needs Python 3.11

log = logging.getLogger("tinyfleet_agent.fieldtest")

__all__ = ["PeriodicSelfTest"]

OnResult = Callable[[str, SelfTestResult], None]


class _Paced:
    """Runs golden feeds through a predictor one at a time, each in a compute slot."""

    def __init__(self, predictor: Any, slot: threading.BoundedSemaphore, pause_s: float) -> None:
        self.predictor, self.slot, self.pause_s = predictor, slot, pause_s

    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(self.pause_s)  # let requests that arrived meanwhile go first
        with self.slot:
            result: list[np.ndarray] = self.predictor.run_feeds(feeds)
        return result


class PeriodicSelfTest:
    """`start()` a daemon thread testing every `interval_s`; `stop()` ends it."""

    def __init__(
        self, api: Any, interval_s: float, on_result: OnResult, *, pause_s: float = 0.01
    ) -> None:
        self.api, self.interval_s, self.on_result = api, interval_s, on_result
        self.pause_s = pause_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="golden-selftest", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def run_once(self) -> tuple[str, SelfTestResult] | None:
        """Test the model serving now; None when none is installed."""
        with self.api.borrowed_model() as borrowed:
            if borrowed is None:
                return None
            predictor, meta = borrowed
            paced = _Paced(predictor, self.api.compute_slot, self.pause_s)
            result = run_golden_selftest(paced, predictor.model_dir / "golden.npz")
        bundle = str(meta.get("bundle") or "")
        self.on_result(bundle, result)
        return bundle, result

    def _loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # best effort, Linux only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # never let the tester take serving down
                log.exception("periodic self-test crashed")


def reporter(store: SlotStore, api: Any, *, rollback: bool) -> OnResult:
    """What to do with each periodic result: telemetry, status, event, maybe roll back."""

    def report(bundle: str, result: SelfTestResult) -> None:
        now = datetime.now(UTC)
        api.telemetry.record_golden(bundle, result.passed, result.agreement)
        summary = {**result.to_dict(), "bundle": bundle, "at": now.isoformat(timespec="seconds")}
        if not result.passed:
            # The event is queued (durably) before the failure shows in status and health,
            # so whoever sees the failure there also finds it on its way to the server.
            log.error("periodic-selftest-failed", extra={"bundle": bundle, "reason": result.reason})
            events = events_outbox(store.state_dir)
            queue_event(events, "selftest-failed", bundle, result.reason, now, periodic=True)
        write_status(store.state_dir, last_periodic_selftest=summary)
        api.set_health(last_periodic_selftest=summary)
        if result.passed:
            return
        active = store.active()
        # The served model may lag the slot switch: a second failure of the bundle just
        # rolled away from must not roll the device back again (to the rejected bundle).
        if rollback and active is not None and active.meta.bundle == bundle:
            try:
                reject_locally(store)
            except SlotError as exc:
                log.error("periodic-selftest-rollback-impossible", extra={"error": str(exc)})

    return report
