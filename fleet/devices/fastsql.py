"""One SQL statement on Django's connection, prepared on PostgreSQL.

The device fast paths (fleet/state.py, fleet/telemetry_fastpath.py) run the same few
statements thousands of times a second. Django's PostgreSQL backend binds parameters on
the client and disables prepared statements (for PgBouncer), so PostgreSQL parses and
plans each one again; as a named prepared statement it only executes. That was about
half of PostgreSQL's CPU per unchanged poll (bench/reports/fleet.md).

The cursor still goes through Django's wrapper: database errors arrive as Django's
`DatabaseError`s and the statement is counted by `assert_num_queries`.
`DATABASE_PREPARED_STATEMENTS=false` turns preparing off (PgBouncer before 1.21 in
transaction mode does not keep prepared statements across server connections).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db import connection


def _prepared_cursor() -> Any:
    import psycopg

    class PreparedCursor(psycopg.Cursor[Any]):
        """Server-side binding, prepared on the first execution."""

        log_sql = False

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs.setdefault("prepare", True)
            result = super().execute(query, params, **kwargs)
            if self.log_sql:
                # A server-side-bound cursor keeps no SQL text, which Django's query log
                # (DEBUG, assertNumQueries, CaptureQueriesContext) reads from `_query`:
                # give it the composed statement. Only when queries are being logged.
                text = psycopg.ClientCursor(self.connection).mogrify(query, params)
                self._query = SimpleNamespace(query=text.encode())  # type: ignore[assignment]
            return result

    return PreparedCursor


_cursor_class: Any = None


def _cursor() -> Any:
    global _cursor_class
    connection.ensure_connection()
    if connection.vendor != "postgresql" or not settings.DATABASE_PREPARED_STATEMENTS:
        return connection.cursor()
    if _cursor_class is None:
        _cursor_class = _prepared_cursor()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django sets None, which also disables explicit `prepare=True`. A threshold no
        # statement reaches keeps everything else unprepared, as Django wants.
        raw.prepare_threshold = 1 << 30
    cursor = _cursor_class(raw)
    cursor.log_sql = connection.queries_logged
    # Django's own wrapper (error translation, query logging) around a prepared cursor.
    return connection._prepare_cursor(cursor)  # type: ignore[attr-defined]


def fetchone(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """Run `sql` (placeholders `%s`) and return its first row, if any."""
    with _cursor() as cursor:
        cursor.execute(sql, params)
        row: tuple[Any, ...] | None = cursor.fetchone()
        return row


def execute(sql: str, params: Sequence[Any]) -> int:
    """Run a statement that returns no rows; returns the row count."""
    with _cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)
