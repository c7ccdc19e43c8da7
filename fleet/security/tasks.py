"""The publishing task: the request side (`publish`) queues it, and its body is the
worker side (`publish_worker`), which imports neither.

Publishing is idempotent (a redelivered message re-runs it from the start or finds it
done). The task keeps the name it had in `fleet.tasks`, so queued messages and running
workers of an older release still agree on it.
"""

from __future__ import annotations

from celery import shared_task

from fleet.security.publish_worker import run_publish


@shared_task(name="fleet.tasks.publish_bundle", acks_late=True)
def publish_bundle(bundle_id: str) -> str:
    return run_publish(bundle_id)
