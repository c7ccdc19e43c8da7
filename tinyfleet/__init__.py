"""tinyfleet Django project: settings, URLs, Celery app."""

from tinyfleet.celery import app as celery_app

__all__ = ["celery_app"]
