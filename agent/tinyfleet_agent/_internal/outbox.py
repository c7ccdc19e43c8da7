"""A bounded, persistent outbox for telemetry batches (SQLite, WAL).

Batches wait here until the server acknowledges them, across restarts and
long offline periods. The outbox never grows past `capacity`: the oldest
batches are dropped, and the number dropped travels in the `dropped` field of
the newest batch, so the server learns exactly how much it missed. Invariant:
total ever dropped = `pending_dropped` + sum of `dropped` over stored rows.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Outbox", "SendResult", "send_pending"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
MAX_BATCH_BYTES = 1 << 20

Sender = Callable[[list[dict[str, Any]]], Iterable[str]]


class Outbox:
    """Batches keyed by their `batch_id`, oldest first.

    Raises (on construction):
        sqlite3.Error: the database cannot be opened or created.
    """

    def __init__(self, path: Path | str, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives process crashes; a power cut may lose the
        # last batch, which telemetry can afford.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def put(self, batch: dict[str, Any]) -> int:
        """Store `batch` (needs a string `batch_id`); return how many old ones were dropped.

        Raises:
            ValueError: no batch_id, not JSON-able, or larger than MAX_BATCH_BYTES.
        """
        batch_id = batch.get("batch_id")
        if not isinstance(batch_id, str) or not batch_id:
            raise ValueError("a batch needs a string batch_id")
        body = json.dumps(batch, sort_keys=True, allow_nan=False)
        if len(body) > MAX_BATCH_BYTES:
            raise ValueError(f"batch is larger than {MAX_BATCH_BYTES} bytes")
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            known = "SELECT 1 FROM batches WHERE batch_id = ?"
            if self._db.execute(known, (batch_id,)).fetchone():
                return 0  # already queued (a retried put): store it once
            excess = self._count() + 1 - self.capacity
            dropped_now = self._drop_oldest(excess) if excess > 0 else 0
            carried = self._counter("pending_dropped")
            self._db.execute(
                "INSERT INTO batches (batch_id, body, dropped) VALUES (?, ?, ?)",
                (batch_id, body, carried),
            )
            self._set_counter("pending_dropped", 0)
            return dropped_now

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

    def _drop_oldest(self, n: int) -> int:
        rows = self._db.execute(
            "SELECT seq, dropped FROM batches ORDER BY seq LIMIT ?", (n,)
        ).fetchall()
        lost = sum(1 + int(r[1]) for r in rows)
        self._db.executemany("DELETE FROM batches WHERE seq = ?", [(r[0],) for r in rows])
        self._set_counter("pending_dropped", self._counter("pending_dropped") + lost)
        return len(rows)

    def peek(self, n: int = 10) -> list[dict[str, Any]]:
        """The `n` oldest batches, each with its `dropped` count filled in."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body, dropped FROM batches ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        batches = []
        for body, dropped in rows:
            batch = json.loads(body)
            batch["dropped"] = int(dropped)
            batches.append(batch)
        return batches

    def ack(self, batch_ids: Iterable[str]) -> int:
        """Delete acknowledged batches; return how many were removed."""
        ids = [(b,) for b in batch_ids]
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            before = self._db.total_changes
            self._db.executemany("DELETE FROM batches WHERE batch_id = ?", ids)
            return self._db.total_changes - before

    def note_attempt(self, batch_ids: Iterable[str]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE batches SET attempts = attempts + 1 WHERE batch_id = ?",
                [(b,) for b in batch_ids],
            )

    def __len__(self) -> int:
        with self._lock:
            return self._count()

    @property
    def pending_dropped(self) -> int:
        """Drops not yet attached to a stored batch (they go on the next `put`)."""
        with self._lock:
            return self._counter("pending_dropped")


@dataclass(frozen=True)
class SendResult:
    sent: int
    remaining: int
    failures: int
    last_error: str | None = None


def send_pending(
    outbox: Outbox,
    sender: Sender,
    *,
    per_request: int = 10,
    retries: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> SendResult:
    """Send batches oldest first until the outbox is empty or sending keeps failing.

    `sender(batches)` returns the batch ids the server acknowledged (it may
    ack fewer than sent) or raises on failure. Failures are retried up to
    `retries` times with exponential backoff and full jitter
    (sleep = random * min(max_delay, base_delay * 2**attempt)), so a fleet
    coming back online does not hit the server in lockstep.
    """
    sent = failures = 0
    last_error: str | None = None
    while batches := outbox.peek(per_request):
        ids = [b["batch_id"] for b in batches]
        try:
            acked = set(sender(batches)) & set(ids)
        except Exception as e:  # any sender failure is retried, then left queued
            failures += 1
            last_error = f"{type(e).__name__}: {e}"
            outbox.note_attempt(ids)
            if failures > retries:
                break
            sleep(jitter() * min(max_delay, base_delay * 2 ** (failures - 1)))
            continue
        if not acked:
            break  # the server took nothing: try again next period, not in a loop
        sent += outbox.ack(acked)
    return SendResult(sent, len(outbox), failures, last_error)
