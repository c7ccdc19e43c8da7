"""Recompute telemetry rollups from the raw batches still kept.

    manage.py rebuild_rollups --days 3
    manage.py rebuild_rollups --since 2026-11-20 --until 2026-11-22

Whole UTC days are replaced; ingest waits while the rebuild runs (PostgreSQL), so run it
for short ranges. Days older than raw retention are refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.telemetry.rollup_maintenance import RebuildError, rebuild


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{value!r} is not an ISO 8601 date or time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Rebuild the hourly and daily telemetry rollups from raw batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="the last N UTC days, today included")
        parser.add_argument("--since", help="first day (ISO 8601, UTC unless an offset is given)")
        parser.add_argument("--until", help="end (exclusive; default now)")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        if options["days"] is not None:
            if options["since"] or options["days"] < 1:
                raise CommandError("give --days N (N >= 1) or --since, not both")
            start = now - timedelta(days=options["days"] - 1)
        elif options["since"]:
            start = _moment(options["since"])
        else:
            raise CommandError("say which days: --days N or --since DATE [--until DATE]")
        end = _moment(options["until"]) if options["until"] else now
        try:
            result = rebuild(start, end, now=now)
        except RebuildError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"rebuilt {result.start:%Y-%m-%d} .. {result.end:%Y-%m-%d} (exclusive) from "
            f"{result.batches} raw batches; {result.skipped} invalid batches skipped"
        )
