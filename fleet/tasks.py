"""Celery tasks of the fleet app: keeping metadata fresh, telemetry upkeep.

Tasks take primary keys and keep their state in the database. Publishing has its own
task module beside the code it runs (`fleet.security.tasks`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from fleet.models import Bundle, BundleStatus
from fleet.models.keys import Repo
from fleet.security import director, image_repo
from fleet.telemetry.rollup_fold import fold_pending
from fleet.telemetry.rollup_maintenance import enforce_retention, rebuild

log = logging.getLogger(__name__)


def _fail_stuck_publishing() -> int:
    """Fail bundles whose publishing task died without redelivery (worker lost)."""
    cutoff = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 600)
    stuck = Bundle.objects.filter(status=BundleStatus.PUBLISHING, created_at__lt=cutoff)
    return stuck.update(
        status=BundleStatus.FAILED, error="publishing stopped responding (worker lost)"
    )


@shared_task
def refresh_metadata() -> dict[str, Any]:
    """Re-sign timestamp, snapshot, targets, roots and director metadata before expiry."""
    image_repo.ensure_repositories()
    result: dict[str, Any] = {"image": image_repo.refresh_image()}
    result["roots"] = [repo for repo in Repo.values if image_repo.refresh_root(repo)]
    result["director"] = director.refresh_director()
    result["failed_publishing"] = _fail_stuck_publishing()
    if any(result.values()):
        log.info("refreshed metadata: %s", result)
    return result


@shared_task
def fold_telemetry() -> dict[str, int]:
    """Beat (deferred mode): add pending telemetry batches to the rollups."""
    return fold_pending()


@shared_task
def enforce_telemetry_retention() -> dict[str, int]:
    """Beat: delete raw telemetry and rollups past their retention, in bounded batches."""
    deleted = enforce_retention()
    if any(deleted.values()):
        log.info("telemetry retention deleted %s", deleted)
    return deleted


@shared_task(acks_late=True)
def rebuild_telemetry_rollups(start: str, end: str) -> dict[str, Any]:
    """Recompute the rollups of [start, end) (ISO 8601 times, whole UTC days)."""
    return rebuild(datetime.fromisoformat(start), datetime.fromisoformat(end)).as_dict()
