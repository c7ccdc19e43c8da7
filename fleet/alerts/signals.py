"""Rollout transitions trigger an alert evaluation at once (not at the next beat)."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_save

log = logging.getLogger(__name__)
_ACTIONS = {"pause", "rollback", "resume", "cancel", "succeed"}


def _queue_evaluation() -> None:
    from fleet.alerts.tasks import evaluate_alerts

    try:
        evaluate_alerts.apply_async(retry=False)
    except Exception as exc:  # broker down: beat evaluates later
        log.warning("could not queue an alert evaluation: %s", exc)


def _on_rollout_event(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if created and instance.action in _ACTIONS:
        transaction.on_commit(_queue_evaluation)


def connect() -> None:
    from fleet.models import RolloutEvent

    post_save.connect(_on_rollout_event, sender=RolloutEvent, dispatch_uid="alerts-rollout")
