"""The Celery app. Tasks take primary keys and store their progress in the database."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tinyfleet.settings")

app = Celery("tinyfleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
