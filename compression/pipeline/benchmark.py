"""Speed and memory of an ONNX model on the CPU onnxruntime will use (or of a .tflite
model on ai-edge-litert, through the same session API).

``benchmark_model`` runs in a *fresh* subprocess with the thread count pinned
(onnxruntime intra-op threads and the OMP/MKL/OpenBLAS env), so a previous
model's arena, caches and thread pools do not leak into the numbers and peak
RSS (VmHWM) belongs to this model alone.

``compare_latency`` times several models in one process, interleaved round by
round, and reports medians: on a shared machine only ratios measured this way
are meaningful.  It uses the thread's CPU time by default, which other
processes competing for the cores do not inflate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["benchmark_model", "compare_latency", "peak_rss_bytes", "synthetic_feeds", "vocab_size"]

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM), 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _input_specs(session: Any) -> list[tuple[str, list[Any], str]]:
    return [(i.name, list(i.shape), i.type) for i in session.get_inputs()]


def vocab_size(model_path: str | Path) -> int | None:
    """Rows of the embedding table that ``input_ids`` indexes, if there is one."""
    if str(model_path).endswith(".tflite"):
        from compression.pipeline.tflite_session import open_tflite

        return open_tflite(model_path).vocab_size
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] == "input_ids" and node.input[0] in dims:
            return int(dims[node.input[0]][0])
    return None


def synthetic_feeds(
    session: Any, batch: int, sequence: int, seed: int = 0, vocab: int | None = None
) -> dict[str, np.ndarray]:
    """Inputs of the right names/types: token ids for text models, noise otherwise.

    Token ids stay below ``vocab`` (default 1000-2000, ordinary word pieces
    in BERT vocabularies) so small models get valid indices.
    """
    rng = np.random.default_rng(seed)
    low, high = (1000, 2000) if vocab is None or vocab > 2000 else (0, vocab)
    specs = _input_specs(session)
    if not any("input_ids" in name for name, _, _ in specs):
        return _tensor_feeds(session, batch, seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape, type_ in specs:
        dims = [
            int(d) if isinstance(d, int) and d > 0 else (batch if i == 0 else sequence)
            for i, d in enumerate(shape)
        ]
        if name == "input_ids":
            ids = rng.integers(low, high, dims)
            if high > 102:
                ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
            feeds[name] = ids.astype(np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones(dims, dtype=np.int64)
        elif "int" in type_:
            feeds[name] = np.zeros(dims, dtype=np.int64 if "int64" in type_ else np.int32)
        else:
            dtype = np.float16 if "float16" in type_ else np.float32
            feeds[name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def _tensor_feeds(session: Any, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Non-text models: the inspection probe's inputs (a state keeps its fixed axes, a
    scalar sample rate is 16 kHz), with `batch` rows on each input's first free axis."""
    from compression.pipeline.outputs import input_dicts, probe_feeds

    specs = input_dicts(session)
    feeds = probe_feeds(specs, seed)
    if batch > 1:
        for spec in specs:
            free = [i for i, d in enumerate(spec["shape"] or []) if d is None]
            if free:
                name = spec["name"]
                feeds[name] = np.repeat(feeds[name], batch, axis=free[0])
    return feeds


def _open(path: str | Path, threads: int) -> Any:
    from compression.pipeline.evaluate import open_session

    return open_session(path, threads)


def compare_latency(
    paths: Sequence[str | Path],
    feeds: Mapping[str, np.ndarray] | None = None,
    rounds: int = 15,
    per_round: int = 5,
    threads: int = 1,
    cpu_time: bool = True,
    sequence: int = 64,
) -> dict[str, float]:
    """Median seconds per run for each model, measured interleaved.

    Each round runs every model ``per_round`` times, alternating the order, so
    slow phases of a shared machine hit all models alike.  With ``cpu_time``
    (only valid for ``threads == 1``: onnxruntime then runs on the caller's
    thread) the clock is the thread's CPU time.
    """
    clock = time.thread_time if cpu_time and threads == 1 else time.perf_counter
    keys = [str(p) for p in paths]
    sessions = {k: _open(k, threads) for k in keys}
    inputs = (
        dict(feeds)
        if feeds is not None
        else synthetic_feeds(sessions[keys[0]], 1, sequence, vocab=vocab_size(keys[0]))
    )
    for s in sessions.values():
        for _ in range(3):
            s.run(None, inputs)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            for _ in range(per_round):
                start = clock()
                sessions[k].run(None, inputs)
                times[k].append(clock() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def _pin_threads(threads: int) -> None:
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)


def _latency(session: Any, feeds: dict[str, np.ndarray], runs: int) -> tuple[float, float]:
    for _ in range(3):
        session.run(None, feeds)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def _benchmark_in_process(
    model_path: str,
    threads: int = 1,
    sequences: Sequence[int] = (16, 64, 128),
    runs: int = 50,
    throughput_batch: int = 32,
    throughput_sequence: int = 64,
    throughput_runs: int = 5,
) -> dict[str, Any]:
    _pin_threads(threads)
    start = time.perf_counter()
    session = _open(model_path, threads)
    load_s = time.perf_counter() - start
    is_text = any(i.name == "input_ids" for i in session.get_inputs())
    vocab = vocab_size(model_path)
    # A fixed-shape model (TFLite) always runs its own length, whatever is asked.
    fixed = getattr(session, "fixed_sequence", None)
    seqs = ([fixed] if fixed else list(sequences)) if is_text else [0]
    latency: dict[str, dict[str, float]] = {}
    for seq in seqs:
        p50, p95 = _latency(session, synthetic_feeds(session, 1, seq, vocab=vocab), runs)
        latency[str(seq) if is_text else "default"] = {"p50_ms": p50 * 1e3, "p95_ms": p95 * 1e3}
    big = synthetic_feeds(session, throughput_batch, fixed or throughput_sequence, vocab=vocab)
    p50, _ = _latency(session, big, throughput_runs)
    return {
        "model_path": model_path,
        "size_bytes": Path(model_path).stat().st_size,
        "threads": threads,
        "load_s": load_s,
        "latency_batch1": latency,
        "throughput_batch": throughput_batch,
        "throughput_items_per_s": throughput_batch / p50,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def benchmark_model(
    model_path: str | Path,
    threads: int = 1,
    sequences: Sequence[int] = (16, 64, 128),
    runs: int = 50,
    throughput_batch: int = 32,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Benchmark ``model_path`` in a fresh subprocess.

    Returns load time, batch-1 latency p50/p95 per sequence length (text
    models), throughput at ``throughput_batch``, peak RSS and file size.

    Raises:
        ConverterCrashError: the benchmark process failed (e.g. model does not load).
    """
    from compression.pipeline.runner import run_in_subprocess

    env = {var: str(threads) for var in _THREAD_ENV}
    kwargs = {
        "model_path": str(model_path),
        "threads": threads,
        "sequences": list(sequences),
        "runs": runs,
        "throughput_batch": throughput_batch,
    }
    result: dict[str, Any] = run_in_subprocess("benchmark", kwargs, timeout=timeout, env=env)
    return result
