"""Counters and single-flight keys shared by every web and worker process, on every node.

A deployment runs several gunicorn workers and Celery workers, on one node or many, all
sharing PostgreSQL, Redis and the object store. Anything kept in a process's memory is
seen by that process only: `/metrics` answered by node A would not count the MQTT
wake-ups node B published, and a per-process debounce lets every process send its own
rollout nudge. So these live in Redis (the Celery broker's server, keys prefixed
`tinyfleet:`; `TINYFLEET_REDIS_URL` points elsewhere): counters are `HINCRBY` on one hash
per family, single-flight is `SET NX EX`.

Without Redis (the embedded default: one node, SQLite, a filesystem broker) the same
calls fall back to this process's memory, as before. A Redis error never fails the
caller: it logs, and counts or debounces locally.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)
PREFIX = "tinyfleet:"

_lock = threading.Lock()
_client: Any = None
_client_key: tuple[int, str] | None = None
_local_counts: dict[str, Counter[str]] = {}
_local_until: dict[str, float] = {}


def redis_url() -> str:
    """The Redis shared state lives in ("" when none is configured)."""
    url = str(getattr(settings, "TINYFLEET_REDIS_URL", "") or "")
    if not url and settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        url = settings.CELERY_BROKER_URL
    return url


def client() -> Any:
    """This process's Redis client (a new one after fork), or None without Redis."""
    global _client, _client_key
    url = redis_url()
    if not url:
        return None
    key = (os.getpid(), url)
    with _lock:
        if _client_key != key:
            import redis

            _client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            _client_key = key
        return _client


def incr(family: str, field: str, n: int = 1) -> None:
    """Add `n` to counter `field` of `family` (e.g. "mqtt_wakeups", "published")."""
    if n == 0:
        return
    r = client()
    if r is not None:
        try:
            r.hincrby(PREFIX + family, field, n)
            return
        except Exception as exc:  # Redis down: never fail the caller
            log.warning("shared counter %s.%s not updated in Redis: %s", family, field, exc)
    with _lock:
        _local_counts.setdefault(family, Counter())[field] += n


def counts(family: str) -> tuple[dict[str, int], bool]:
    """The counters of `family`, and whether they are fleet-wide (Redis) or only this
    process's (no Redis, or Redis unreachable)."""
    r = client()
    if r is not None:
        try:
            raw = r.hgetall(PREFIX + family)
            return {k.decode(): int(v) for k, v in raw.items()}, True
        except Exception as exc:
            log.warning("shared counters %s not read from Redis: %s", family, exc)
    with _lock:
        return dict(_local_counts.get(family, Counter())), False


def first_in(key: str, seconds: float) -> bool:
    """True for the first caller in `seconds` across all processes (single-flight);
    the others get False until the window ends."""
    r = client()
    if r is not None:
        try:
            return bool(r.set(PREFIX + key, b"1", nx=True, px=max(1, int(seconds * 1000))))
        except Exception as exc:
            log.warning("single-flight key %s not set in Redis: %s", key, exc)
    now = time.monotonic()
    with _lock:
        if now < _local_until.get(key, 0.0):
            return False
        _local_until[key] = now + seconds
        return True
