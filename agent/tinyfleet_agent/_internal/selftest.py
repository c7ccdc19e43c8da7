"""The golden-set self-test: does this model, on this runtime, on this device,
still answer like the parent model did on the server?

golden.npz (written by the server with np.savez, loaded here without pickle):
  "{i}/input/{name}"  feeds of example i (batch 1, already tokenized)
  "{i}/reference"     the parent model's raw first output for those feeds
  "meta"              uint8 JSON {"task", "count", "format": 1, "tolerance":
                      {"min_cosine": x} (text-embedding) | {"max_abs_error": y}}

Text embeddings are compared as mean-pooled, L2-normalised vectors (the
attention mask from the feeds); everything else element-wise. A wrong
runtime, a shape change, NaNs or a damaged model make the test fail with a
reason; it never raises.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .textpipe import l2_normalize, pool

__all__ = ["SelfTestResult", "run_golden_selftest"]

GOLDEN_FORMAT = 1
MAX_EXAMPLES = 4096
_MAX_META_BYTES = 64 * 1024


@runtime_checkable
class _RunsFeeds(Protocol):
    def run_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class _Runs(Protocol):
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class SelfTestResult:
    """passed; agreement = fraction of examples within tolerance; worst = the
    lowest cosine or highest absolute error seen (NaN when nothing ran)."""

    passed: bool
    agreement: float
    worst: float
    count: int
    reason: str
    metric: str = ""

    def to_dict(self) -> dict[str, Any]:
        worst = None if math.isnan(self.worst) else self.worst
        return {
            "passed": self.passed,
            "agreement": self.agreement,
            "worst": worst,
            "count": self.count,
            "reason": self.reason,
            "metric": self.metric,
        }


class _GoldenError(Exception):
    """Internal: the golden file itself is unusable."""


def _fail(reason: str, metric: str = "", count: int = 0) -> SelfTestResult:
    return SelfTestResult(False, 0.0, math.nan, count, reason, metric)


def _runner(target: _RunsFeeds | _Runs) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    # A Predictor exposes run_feeds (its runtime's run); a bare runtime has run.
    if isinstance(target, _RunsFeeds):
        return target.run_feeds
    return target.run


def _read_meta(golden: Any) -> dict[str, Any]:
    if "meta" not in golden.files:
        raise _GoldenError("golden set has no meta")
    raw = golden["meta"]
    if raw.dtype != np.uint8 or raw.size > _MAX_META_BYTES:
        raise _GoldenError("golden meta is not small uint8 JSON")
    try:
        meta = json.loads(raw.tobytes())
    except (ValueError, UnicodeDecodeError):
        raise _GoldenError("golden meta is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != GOLDEN_FORMAT:
        raise _GoldenError(f"unsupported golden format {meta.get('format')!r}")
    count, tolerance = meta.get("count"), meta.get("tolerance")
    if type(count) is not int or not 0 < count <= MAX_EXAMPLES:
        raise _GoldenError("golden count is missing or out of range")
    if not isinstance(tolerance, dict) or not (
        _number(tolerance.get("min_cosine")) or _number(tolerance.get("max_abs_error"))
    ):
        raise _GoldenError("golden tolerance needs min_cosine or max_abs_error")
    return meta


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _example(golden: Any, i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    prefix = f"{i}/input/"
    feeds = {k[len(prefix) :]: golden[k] for k in golden.files if k.startswith(prefix)}
    if not feeds or f"{i}/reference" not in golden.files:
        raise _GoldenError(f"golden example {i} is incomplete")
    return feeds, golden[f"{i}/reference"]


def _cosine(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None) -> float:
    """Cosine of mean-pooled, normalised vectors; raises ValueError on shape mismatch."""
    got = l2_normalize(pool(output, mask, "mean"))
    want = l2_normalize(pool(reference, mask, "mean"))
    if got.shape != want.shape:
        raise ValueError(f"embedding shape {got.shape} != reference {want.shape}")
    return float(np.sum(got * want, axis=-1).min())


def _max_abs(output: np.ndarray, reference: np.ndarray) -> float:
    out = np.asarray(output, dtype=np.float64)
    if out.ndim == reference.ndim == 3 and out.shape[1] > reference.shape[1]:
        out = out[:, : reference.shape[1]]  # a fixed-shape model's padded positions
    if out.shape != reference.shape:
        raise ValueError(f"output shape {out.shape} != reference {reference.shape}")
    return float(np.max(np.abs(out - reference.astype(np.float64)), initial=0.0))


def _mask_2d(mask: np.ndarray | None) -> np.ndarray | None:
    """A 0/1 [batch, seq] mask, also from a TFLite graph's additive 4-D mask."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 4:
        return (mask.reshape(mask.shape[0], -1) > -1.0).astype(np.int64)
    return mask


def _score(
    metric: str, output: np.ndarray, reference: np.ndarray, feeds: Mapping[str, np.ndarray]
) -> float:
    if not np.all(np.isfinite(output)):
        return math.nan
    if metric == "cosine":
        return _cosine(output, reference, _mask_2d(feeds.get("attention_mask")))
    return _max_abs(output, reference)


def run_golden_selftest(
    predictor_or_runtime: _RunsFeeds | _Runs,
    golden_path: Path | str,
    *,
    min_agreement: float | None = None,
    max_examples: int | None = None,
) -> SelfTestResult:
    """Run every golden example and compare with the parent's reference output.

    Passes when the fraction of examples within tolerance reaches
    `min_agreement` (default: the golden meta's optional
    `tolerance.min_agreement`, else 1.0 — every example must agree).
    """
    try:
        with np.load(golden_path, allow_pickle=False) as golden:
            return _run(_runner(predictor_or_runtime), golden, min_agreement, max_examples)
    except (_GoldenError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        return _fail(f"golden-unusable: {e}")


def _run(
    run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
    golden: Any,
    min_agreement: float | None,
    max_examples: int | None,
) -> SelfTestResult:
    meta = _read_meta(golden)
    tolerance = meta["tolerance"]
    metric = "cosine" if _number(tolerance.get("min_cosine")) else "max_abs_error"
    bound = float(tolerance["min_cosine" if metric == "cosine" else "max_abs_error"])
    needed = min_agreement
    if needed is None:
        needed = float(tolerance.get("min_agreement", 1.0))
    count = min(meta["count"], max_examples or meta["count"])
    within, scores = 0, []
    for i in range(count):
        feeds, reference = _example(golden, i)
        try:
            output = run(feeds)[0]
        except Exception as e:  # a runtime error on a golden input fails the test
            return _fail(f"run-failed: example {i}: {e}", metric, count)
        try:
            score = _score(metric, np.asarray(output), reference, feeds)
        except ValueError as e:
            return _fail(f"shape-mismatch: example {i}: {e}", metric, count)
        if math.isnan(score):
            return _fail(f"non-finite: example {i} produced NaN or inf", metric, count)
        scores.append(score)
        within += score >= bound if metric == "cosine" else score <= bound
    worst = min(scores) if metric == "cosine" else max(scores)
    agreement = within / count
    passed = agreement >= needed
    reason = "ok" if passed else f"below-tolerance: {within}/{count} within {metric} {bound}"
    return SelfTestResult(passed, agreement, worst, count, reason, metric)
