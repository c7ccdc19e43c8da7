"""The Celery task that moves a chain on after one of its jobs finished. Sent by name from
``compression.tasks`` so the worker side never imports the job-creating side."""

from __future__ import annotations

from celery import shared_task

from compression.chains import advance


@shared_task(acks_late=True)
def advance_chain(job_id: int) -> None:
    advance(job_id)
