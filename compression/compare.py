"""Numbers for the variant comparison page and the recommendation rule."""

from __future__ import annotations

from typing import Any

from compression.models import ModelVersion

# The bar a recommended variant must clear (DESIGN: honest numbers, fidelity first).
MIN_COSINE = 0.998
MAX_ACCURACY_DROP_POINTS = 1.0
# Prediction agreement that bounds the accuracy drop by MAX_ACCURACY_DROP_POINTS.
MIN_AGREEMENT = 1 - MAX_ACCURACY_DROP_POINTS / 100


def _fidelity_score(fidelity: dict[str, Any]) -> float | None:
    for key in ("cosine_mean", "agreement"):
        if key in fidelity:
            return float(fidelity[key])
    return None


def unmeasured_reason(version: ModelVersion) -> str | None:
    """Why this version's fidelity figure cannot be trusted (None when it can).

    Derived versions only: a figure flagged by the sanity checks, one measured on
    another output than today's primary one, or none at all.
    """
    if version.parent_id is None:
        return None
    fidelity = (version.metrics or {}).get("fidelity") or {}
    if not fidelity:
        return "no fidelity was measured"
    if fidelity.get("measured") is False:
        return str(fidelity.get("reason") or "the figure failed its sanity checks")
    measured_on = fidelity.get("output")
    primary = version.primary_output
    if "output" in fidelity and primary and measured_on != primary:
        return f"measured on output {measured_on!r}, not on the primary output {primary!r}"
    if "output" not in fidelity and version.inspection.get("primary_output") not in (
        None,
        _first_output(version),
    ):
        return "measured on the first output, which is not the primary output"
    return None


def _first_output(version: ModelVersion) -> str | None:
    outputs = (version.inspection or {}).get("outputs") or []
    return str(outputs[0].get("name")) if outputs else None


def comparison_row(version: ModelVersion) -> dict[str, Any]:
    metrics = version.metrics or {}
    fidelity = metrics.get("fidelity", {})
    bench = metrics.get("benchmark", {})
    reason = unmeasured_reason(version)
    if reason is not None:
        fidelity = {}
    return {
        "unmeasured": reason,
        "id": version.pk,
        "number": version.number,
        "recipe": version.recipe or "upload",
        "format": version.format,
        "size_bytes": version.size_bytes,
        "size_mb": round(version.size_bytes / 1e6, 2),
        "fidelity": _fidelity_score(fidelity),
        "cosine_min": fidelity.get("cosine_min"),
        "nn_agreement": fidelity.get("nn_agreement"),
        "accuracy_drop_points": fidelity.get("accuracy_drop_points"),
        "latency_ms": bench.get("latency_p50_ms"),
        # Which sequence length the headline latency is at: 64, or a fixed-shape model's own.
        "latency_seq": _headline_sequence(bench),
        "latency_ratio": metrics.get("latency_ratio"),
        "rss_mb": bench.get("peak_rss_mb"),
        "parent": version.parent_id,
        **origin_figures(version),
    }


def origin_figures(version: ModelVersion) -> dict[str, Any]:
    """Fidelity to the original upload (the lineage's root): the reference itself scores
    1, a direct child its own figure, a chain's later step the figure measured against the
    root (``fidelity_to_origin``). None where it was not measured."""
    if version.parent_id is None:
        return _origin(1.0, 1.0, None, direct=True, metric="cosine")
    direct = version.parent is not None and version.parent.parent_id is None
    if direct:
        reason = unmeasured_reason(version)
        record = {} if reason else (version.metrics or {}).get("fidelity") or {}
    else:
        record = (version.metrics or {}).get("fidelity_to_origin") or {}
        reason = None
        if not record.get("measured"):
            reason = str(record.get("reason") or "not measured against the original")
    if reason is not None:
        return _origin(None, None, reason, direct=direct, metric=None)
    metric = "cosine" if "cosine_mean" in record else "agreement"
    return _origin(
        _fidelity_score(record), record.get("nn_agreement"), None, direct=direct, metric=metric
    )


def _origin(
    score: float | None, nn: Any, reason: str | None, *, direct: bool, metric: str | None
) -> dict[str, Any]:
    return {
        "origin_fidelity": score,
        "origin_nn": nn,
        "origin_reason": reason,
        # True for the original and its direct children: their own figure is the one.
        "origin_direct": direct,
        "origin_metric": metric,
    }


def _headline_sequence(bench: dict[str, Any]) -> str | None:
    measured = (bench.get("detail") or {}).get("latency_batch1") or {}
    if "64" in measured:
        return "64"
    return next(iter(measured), None)


def meets_target(row: dict[str, Any]) -> bool:
    """The variant is close enough to the original upload, not merely to its parent: an
    export of a distilled student matches the student perfectly and the teacher maybe
    not at all."""
    if row["parent"] is None:
        return False  # the original is the reference, not a candidate
    if row.get("unmeasured"):
        return False  # a figure that cannot be trusted never earns the star
    if not row.get("origin_direct"):
        # A chain's later step: only its figure against the original counts. For a
        # classifier, >= 99% agreement bounds the accuracy drop by 1 point.
        score = row.get("origin_fidelity")
        bar = MIN_COSINE if row.get("origin_metric") == "cosine" else MIN_AGREEMENT
        return score is not None and score >= bar
    drop = row.get("accuracy_drop_points")
    if drop is not None:
        return float(drop) <= MAX_ACCURACY_DROP_POINTS
    score = row.get("fidelity")
    return score is not None and score >= MIN_COSINE


def recommend(rows: list[dict[str, Any]]) -> int | None:
    """The fastest derived variant that meets the fidelity target (smallest on ties)."""
    eligible = [r for r in rows if meets_target(r)]
    if not eligible:
        return None
    best = min(eligible, key=lambda r: (r["latency_ms"] or float("inf"), r["size_bytes"]))
    return int(best["id"])


def _point(row: dict[str, Any]) -> tuple[float, float, float] | None:
    """(size, latency, fidelity to the original) when all three are known; the reference
    scores 1. The original is the common yardstick: fidelity to a parent is not comparable
    across the steps of a chain."""
    fidelity = row.get("origin_fidelity")
    if row.get("latency_ms") is None or fidelity is None or row.get("unmeasured"):
        return None
    return float(row["size_bytes"]), float(row["latency_ms"]), float(fidelity)


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """Set each row's "pareto": "frontier", "dominated" (another variant is at least as
    small, as fast and as faithful, and better in one) or "unknown" (a figure missing)."""
    points = {id(r): _point(r) for r in rows}
    for row in rows:
        mine = points[id(row)]
        if mine is None:
            row["pareto"] = "unknown"
            continue
        dominated = any(
            other is not None
            and other != mine
            and other[0] <= mine[0]
            and other[1] <= mine[1]
            and other[2] >= mine[2]
            for other in points.values()
        )
        row["pareto"] = "dominated" if dominated else "frontier"
