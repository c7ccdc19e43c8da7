"""Telemetry histograms and batches; the bounded, persistent outbox."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from tinyfleet_agent._internal import sysinfo
from tinyfleet_agent._internal import telemetry as T
from tinyfleet_agent._internal.outbox import Outbox, send_pending
from tinyfleet_agent._internal.telemetry import (
    LATENCY_EDGES_MS,
    Histogram,
    Telemetry,
    percentile_from_buckets,
)


def test_it_uses_fixed_log_spaced_latency_buckets() -> None:
    assert 38 <= len(LATENCY_EDGES_MS) <= 45
    assert LATENCY_EDGES_MS[0] == 0.1 and LATENCY_EDGES_MS[-1] >= 60_000
    ratios = {round(b / a, 2) for a, b in itertools.pairwise(LATENCY_EDGES_MS)}
    assert ratios <= {1.38, 1.39, 1.4}
    assert T._log_edges(0.1, 7, 42) == LATENCY_EDGES_MS  # deterministic: the server recomputes


def test_it_merges_histograms_exactly() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(2.0, 1.5) for _ in range(5000)]
    whole, left, right = (Histogram(LATENCY_EDGES_MS) for _ in range(3))
    for i, v in enumerate(values):
        whole.observe(v)
        (left if i % 3 else right).observe(v)
    merged = Histogram(LATENCY_EDGES_MS).merge(left).merge(right)
    assert merged.counts == whole.counts and merged.total == 5000
    for q in (50, 90, 99, 99.9):
        assert merged.percentile(q) == whole.percentile(q)
    exact = sorted(values)[2499]
    bucket = T._bucket(LATENCY_EDGES_MS, exact)
    low = LATENCY_EDGES_MS[bucket - 1] if bucket else 0.0
    assert low <= merged.percentile(50) <= LATENCY_EDGES_MS[bucket]  # type: ignore[operator]
    with pytest.raises(ValueError):
        merged.merge(Histogram(T.CONFIDENCE_EDGES))


def test_it_estimates_percentiles_from_buckets() -> None:
    edges = (1.0, 2.0, 4.0)
    assert percentile_from_buckets(edges, [0, 0, 0, 0], 50) is None
    assert percentile_from_buckets(edges, [0, 10, 0, 0], 50) == pytest.approx(1.5)
    assert percentile_from_buckets(edges, [0, 0, 0, 5], 99) == 4.0  # overflow: a lower bound
    assert percentile_from_buckets(edges, [4, 0, 0, 0], 100) == 1.0
    h = Histogram(edges)
    for v in (1.0, 1.0001, 4.0, 9.0):
        h.observe(v)
    assert h.counts == [1, 1, 1, 1]  # upper edges are inclusive
    with pytest.raises(ValueError):
        percentile_from_buckets(edges, [1, 0, 0, 0], 101)


def test_it_builds_a_private_json_batch_and_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(1000.0, 60.0)
    energy = iter([(900, 1000)] + [(100, 1000)] * 10)  # wraps once
    monkeypatch.setattr(sysinfo, "rapl_energy_uj", lambda: next(energy))
    telemetry = Telemetry(agent_version="0.1.0", clock=lambda: next(clock))
    telemetry.set_bundle("intent-r1", load_ms=412.5)
    telemetry.record_request("intent-r1", 3.2, [6, 9], [0.91, 0.42], low_confidence=1)
    telemetry.record_request("intent-r1", 80.0, [3], [0.99])
    telemetry.record_error("intent-r1", "bad-input")
    telemetry.record_error(None, "no-model")
    telemetry.record_feedback("intent-r1", "lights", "music")
    telemetry.record_feedback("intent-r1", "lights", "music")
    telemetry.record_golden("intent-r1", passed=True, agreement=1.0)
    telemetry.record_golden("intent-r1", passed=False, agreement=0.5)
    batch = telemetry.snapshot_and_reset()
    json.dumps(batch, allow_nan=False)
    uuid.UUID(batch["batch_id"], version=4)
    assert batch["period_start"].startswith("1970-01-01T00:16:40")
    assert batch["period_end"].startswith("1970-01-01T00:17:40")
    [stats] = batch["bundles"]
    assert stats["requests"] == 2 and stats["inferences"] == 3 and stats["low_confidence"] == 1
    assert sum(stats["latency_ms"]) == 2 and sum(stats["input_tokens"]) == 3
    assert stats["errors"] == {"bad-input": 1} and batch["errors"] == {"no-model": 1}
    assert stats["feedback"] == [{"predicted": "lights", "actual": "music", "count": 2}]
    assert stats["golden"] == {"runs": 2, "failed": 1, "last_agreement": 0.5, "min_agreement": 0.5}
    assert stats["load_ms"] == 412.5
    assert batch["system"]["energy_uj"] == 200
    assert batch["system"]["energy_per_inference_mj"] == pytest.approx(200 / 3 / 1000)
    assert batch["system"]["rss_bytes"] > 0 and batch["system"]["cpu_seconds"] >= 0
    nothing_raw = json.dumps(batch)
    assert "turn the lights" not in nothing_raw
    again = telemetry.snapshot_and_reset()
    assert (
        again["bundles"] == [] and again["errors"] == {} and again["batch_id"] != batch["batch_id"]
    )
    telemetry.record_request("intent-r1", 1.0)
    assert telemetry.snapshot_and_reset()["bundles"][0]["load_ms"] == 412.5


def batch(n: int) -> dict[str, Any]:
    return {"batch_id": f"b{n}", "n": n}


def test_it_bounds_the_outbox_and_counts_what_it_dropped(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", capacity=3)
    for n in range(3):
        assert outbox.put(batch(n)) == 0
    assert outbox.put(batch(3)) == 1  # b0 dropped
    assert outbox.put(batch(4)) == 1  # b1 dropped
    assert [(b["batch_id"], b["dropped"]) for b in outbox.peek(10)] == [
        ("b2", 0),
        ("b3", 1),
        ("b4", 1),
    ]
    # Dropping a batch that carried drops carries those on too: nothing is lost.
    outbox.put(batch(5))
    outbox.put(batch(6))  # drops b3 (1 carried + itself)
    outbox.put(batch(7))  # drops b4 (1 carried + itself)
    dropped = [b["dropped"] for b in outbox.peek(10)]
    assert sum(dropped) == 6 - 1  # b0..b4 dropped; b5 .. b7 remain
    assert [b["batch_id"] for b in outbox.peek(10)] == ["b5", "b6", "b7"]
    assert outbox.ack(["b5", "b6", "unknown"]) == 2 and len(outbox) == 1
    with pytest.raises(ValueError):
        outbox.put({"no": "id"})


def test_it_keeps_batches_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = Outbox(path, capacity=2)
    for n in range(3):
        first.put(batch(n))
    first.close()
    reopened = Outbox(path, capacity=2)
    assert [(b["batch_id"], b["dropped"]) for b in reopened.peek(10)] == [("b1", 0), ("b2", 1)]
    assert reopened._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened.put(batch(1))  # a retransmitted id is stored once
    assert len(reopened) == 2


def test_it_sends_with_retries_backoff_and_jitter(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    for n in range(25):
        outbox.put(batch(n))
    failures = iter([True, True, False, False, False])
    sleeps: list[float] = []
    sent_batches: list[list[str]] = []

    def sender(batches: list[dict[str, Any]]) -> list[str]:
        if next(failures):
            raise ConnectionError("server down")
        sent_batches.append([b["batch_id"] for b in batches])
        return [b["batch_id"] for b in batches]

    result = send_pending(outbox, sender, base_delay=2.0, sleep=sleeps.append, jitter=lambda: 0.5)
    assert result.sent == 25 and result.remaining == 0 and result.failures == 2
    assert sleeps == [1.0, 2.0]  # 0.5 * 2, 0.5 * 4: exponential with full jitter
    assert [len(ids) for ids in sent_batches] == [10, 10, 5]


def test_it_gives_up_after_the_retry_budget_and_keeps_the_batches(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put(batch(1))
    sleeps: list[float] = []

    def down(batches: list[dict[str, Any]]) -> list[str]:
        raise TimeoutError("no route")

    result = send_pending(
        outbox, down, retries=3, max_delay=3.0, sleep=sleeps.append, jitter=lambda: 1.0
    )
    assert result.sent == 0 and result.remaining == 1 and result.failures == 4
    assert sleeps == [1.0, 2.0, 3.0] and "no route" in (result.last_error or "")
    assert send_pending(outbox, lambda b: [], sleep=sleeps.append).remaining == 1  # nothing acked


def test_it_keeps_drop_counts_when_a_batch_id_is_put_twice(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", capacity=1)
    outbox.put(batch(1))
    outbox.put(batch(2))  # drops b1
    outbox.put(batch(2))  # same id again: ignored, and no drop may vanish
    assert [(b["batch_id"], b["dropped"]) for b in outbox.peek()] == [("b2", 1)]
    outbox.ack(["b2"])
    outbox.put(batch(3))
    assert outbox.peek()[0]["dropped"] == 0 and outbox.pending_dropped == 0


def test_it_reads_free_disk_of_the_state_dir_and_none_when_it_cannot(tmp_path: Path) -> None:
    usage = sysinfo.disk_usage(tmp_path)
    assert 0 < usage["disk_free_bytes"] <= usage["disk_total_bytes"]  # type: ignore[operator]
    assert sysinfo.disk_usage(tmp_path / "missing") == {
        "disk_free_bytes": None,
        "disk_total_bytes": None,
    }
