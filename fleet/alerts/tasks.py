"""Celery side of alerts: periodic evaluation and deliveries retried with backoff.

The request side (the alerts page, the rollout signal) imports this module; it imports
the worker side (`engine`, `delivery`), which imports neither."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def evaluate_alerts() -> dict[str, int]:
    """Beat (every ALERT_EVALUATION_INTERVAL) and on each rollout transition."""
    from fleet.alerts.engine import evaluate

    result = evaluate()  # committed: the deliveries exist for the worker to read
    for pk in result.deliveries:
        queue_delivery(pk)
    requeued = requeue_lost()
    totals = result.counts()
    if result.opened or result.resolved or requeued:
        log.info("alerts: %s, %d deliveries re-queued", totals, requeued)
    return {**totals, "requeued": requeued}


def queue_delivery(delivery_id: int) -> bool:
    """Queue one delivery; with the broker down it stays pending and the next
    evaluation's `requeue_lost` sends it."""
    try:
        deliver.apply_async((delivery_id,), retry=False)
    except Exception as exc:
        log.warning("could not queue alert delivery %s: %s", delivery_id, exc)
        return False
    return True


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver(self, delivery_id: int) -> str:
    """One attempt; a transient failure re-schedules this task after the backoff (the
    attempt count lives in the delivery row, which also caps the retries)."""
    from fleet.alerts.delivery import attempt

    retry_in = attempt(delivery_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
    return "done"


def requeue_lost() -> int:
    """Deliveries whose task was lost (broker down when queued, worker gone while a
    retry waited) are queued again once they are well overdue."""
    from fleet.alerts.models import Delivery, DeliveryStatus

    now = timezone.now()
    stuck = Delivery.objects.filter(
        status__in=(DeliveryStatus.PENDING, DeliveryStatus.RETRYING),
        created_at__lt=now - timedelta(minutes=5),
    ).exclude(next_attempt_at__gt=now - timedelta(minutes=5))
    count = 0
    for pk in stuck.values_list("pk", flat=True)[:100]:
        try:
            deliver.apply_async((pk,), retry=False)
            count += 1
        except Exception as exc:
            log.warning("could not re-queue alert delivery %s: %s", pk, exc)
            break
    return count
