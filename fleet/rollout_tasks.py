"""Celery tasks that move rollouts: periodic gate evaluation, and a nudge on reports."""

from __future__ import annotations

import logging
import threading
import time

from celery import shared_task

log = logging.getLogger(__name__)
_NUDGE_INTERVAL = 5.0
_last_nudge = 0.0
_nudge_lock = threading.Lock()


@shared_task(acks_late=True)
def evaluate_rollouts() -> dict[int, str]:
    from fleet.rollouts.gates import step_all
    from fleet.telemetry.rollup_fold import fold_pending

    # Gates read rollups: in deferred mode, fold what devices just reported first.
    fold_pending()
    return step_all()


def nudge() -> None:
    """Ask for an evaluation soon after a device reported; never fails the report.

    Debounced per process, and sent without retries: with the broker down, devices are
    still answered and beat catches up later.
    """
    global _last_nudge
    with _nudge_lock:
        now = time.monotonic()
        if now - _last_nudge < _NUDGE_INTERVAL:
            return
        _last_nudge = now
    try:
        evaluate_rollouts.apply_async(retry=False)
    except Exception as exc:  # broker down: beat will evaluate later
        log.warning("could not queue a rollout evaluation: %s", exc)
