"""Golden sets: a few inputs, the parent's outputs and a tolerance.

The device replays the inputs after installing a model and compares its
outputs with the parent's (``tinyfleet_agent`` has its own reader).  The file
layout is format 1, shared with ``assess.write_golden``:

  "{i}/input/{name}"  feeds of example i (batch 1)
  "{i}/reference"     the parent's raw first output for those feeds
  "meta"              uint8 JSON {"task", "count", "format": 1,
                      "tolerance": {"min_cosine": x} | {"max_abs_error": y}}

Embeddings ("text-embedding") are compared as mean-pooled, L2-normalised
vectors using the feeds' attention mask; everything else element-wise.
This module is numpy-only on purpose: the device side may import it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GOLDEN_FORMAT",
    "Golden",
    "GoldenCheck",
    "GoldenError",
    "build_golden",
    "check_golden",
    "golden_tolerance",
    "load_golden",
]

GOLDEN_FORMAT = 1
MAX_EXAMPLES = 1024


class GoldenError(ValueError):
    """A golden file is malformed, or outputs do not match its examples."""


@dataclass(frozen=True)
class Golden:
    task: str
    feeds: list[dict[str, np.ndarray]]
    references: list[np.ndarray]
    tolerance: dict[str, float]
    sha256: str = ""


@dataclass(frozen=True)
class GoldenCheck:
    passed: bool
    agreement: float  # fraction of examples within tolerance
    worst: float  # lowest cosine, or largest abs error
    metric: str  # "cosine" | "max_abs_error"
    failures: list[int] = field(default_factory=list)


def _embedding(output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    out = np.asarray(output, dtype=np.float64)
    if out.ndim == 3:
        m = np.ones(out.shape[:2]) if mask is None else np.asarray(mask, dtype=np.float64)
        out = (out * m[..., None]).sum(axis=1) / np.clip(m.sum(axis=1, keepdims=True), 1e-9, None)
    out = out.reshape(out.shape[0], -1)
    return out / np.clip(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12, None)


def _cosine(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> float:
    got, want = _embedding(output, mask), _embedding(reference, mask)
    if got.shape != want.shape:
        raise GoldenError(f"embedding shape {got.shape} != reference {want.shape}")
    return float((got * want).sum(axis=-1).min())


def _max_abs(output: np.ndarray, reference: np.ndarray) -> float:
    if np.shape(output) != np.shape(reference):
        raise GoldenError(f"output shape {np.shape(output)} != reference {np.shape(reference)}")
    diff = np.abs(np.asarray(output, np.float64) - np.asarray(reference, np.float64))
    return float(diff.max(initial=0.0))


def golden_tolerance(
    task: str,
    references: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    feeds: Sequence[Mapping[str, np.ndarray]],
    margin: float = 0.01,
) -> dict[str, float]:
    """A per-example bound the candidate meets here, with headroom for other CPUs.

    Embeddings: min cosine seen minus ``margin``.  Others: twice the worst
    abs error, at least 0.1% of the output scale.
    """
    if task == "text-embedding":
        cos = [
            _cosine(c, r, f.get("attention_mask"))
            for r, c, f in zip(references, candidates, feeds, strict=True)
        ]
        return {"min_cosine": round(max(0.0, min(cos) - margin), 4)}
    worst = max(_max_abs(c, r) for r, c in zip(references, candidates, strict=True))
    scale = max(float(np.abs(r).max()) for r in references) or 1.0
    return {"max_abs_error": round(max(worst * 2.0, 1e-3 * scale), 6)}


def build_golden(
    path: str | Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    references: Sequence[np.ndarray],
    task: str,
    tolerance: Mapping[str, float],
) -> str:
    """Write the golden .npz (uncompressed: cheap to read on a device); return its sha256.

    Raises:
        GoldenError: no examples, too many, or feeds/references of different counts.
    """
    if not feeds or len(feeds) != len(references):
        raise GoldenError(
            f"need matching feeds and references, got {len(feeds)} and {len(references)}"
        )
    if len(feeds) > MAX_EXAMPLES:
        raise GoldenError(f"at most {MAX_EXAMPLES} golden examples")
    arrays: dict[str, np.ndarray] = {}
    for i, (feed, ref) in enumerate(zip(feeds, references, strict=True)):
        for name, value in feed.items():
            arrays[f"{i}/input/{name}"] = np.asarray(value)
        arrays[f"{i}/reference"] = np.asarray(ref)
    meta = {
        "task": task,
        "count": len(feeds),
        "tolerance": dict(tolerance),
        "format": GOLDEN_FORMAT,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    tmp.replace(target)  # atomic: a reader never sees half a golden set
    return hashlib.sha256(target.read_bytes()).hexdigest()


def load_golden(path: str | Path) -> Golden:
    """Read a golden set without pickle.

    Raises:
        GoldenError: missing meta, unknown format, incomplete examples.
    """
    raw = Path(path).read_bytes()
    with np.load(path, allow_pickle=False) as data:
        if "meta" not in data.files:
            raise GoldenError("golden set has no meta")
        meta: dict[str, Any] = json.loads(data["meta"].tobytes())
        if meta.get("format") != GOLDEN_FORMAT:
            raise GoldenError(f"unsupported golden format {meta.get('format')!r}")
        count = meta.get("count")
        if type(count) is not int or not 0 < count <= MAX_EXAMPLES:
            raise GoldenError("golden count is missing or out of range")
        feeds, refs = [], []
        for i in range(count):
            prefix = f"{i}/input/"
            feed = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
            if not feed or f"{i}/reference" not in data.files:
                raise GoldenError(f"golden example {i} is incomplete")
            feeds.append(feed)
            refs.append(data[f"{i}/reference"])
    return Golden(
        task=str(meta.get("task", "")),
        feeds=feeds,
        references=refs,
        tolerance=dict(meta.get("tolerance", {})),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def check_golden(
    outputs: Sequence[np.ndarray], golden: Golden, min_agreement: float = 1.0
) -> GoldenCheck:
    """Compare a model's outputs on ``golden.feeds`` (same order) with the references.

    Non-finite outputs and shape mismatches count as failures, never raise.

    Raises:
        GoldenError: the number of outputs differs from the golden examples.
    """
    if len(outputs) != len(golden.references):
        raise GoldenError(f"{len(outputs)} outputs for {len(golden.references)} golden examples")
    cosine = "min_cosine" in golden.tolerance
    metric = "cosine" if cosine else "max_abs_error"
    bound = float(golden.tolerance["min_cosine" if cosine else "max_abs_error"])
    failures: list[int] = []
    scores: list[float] = []
    for i, (out, ref, feed) in enumerate(
        zip(outputs, golden.references, golden.feeds, strict=True)
    ):
        try:
            score = _cosine(out, ref, feed.get("attention_mask")) if cosine else _max_abs(out, ref)
        except GoldenError:
            score = math.nan
        if not np.all(np.isfinite(out)):
            score = math.nan
        scores.append(score)
        ok = not math.isnan(score) and (score >= bound if cosine else score <= bound)
        if not ok:
            failures.append(i)
    finite = [s for s in scores if not math.isnan(s)]
    worst = (min(finite) if cosine else max(finite)) if finite else math.nan
    agreement = 1.0 - len(failures) / len(scores)
    return GoldenCheck(agreement >= min_agreement, agreement, worst, metric, failures)
