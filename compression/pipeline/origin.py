"""Fidelity of a derived model to the original at the root of its lineage.

Each recipe's assessment compares a child with its parent. Down a chain (teacher ->
student -> ONNX -> int8) those figures do not add up to what a user wants to know: how
far the model they ship is from the model they uploaded. This measures that directly,
both models run on the same held-out real text (the operator's evaluation set when the
job has one), so a chain's steps can be put on one fidelity-against-latency curve.

Text models only (embeddings and classifiers); anything else returns "not measured"
with the reason, never a number that means something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.assess import (
    feed_length,
    fidelity_record,
    find_tokenizer,
    model_runner,
    pooled_embedding,
    sanity,
    text_feeds,
)
from compression.pipeline.evaluate import nearest_neighbours
from compression.pipeline.textdata import load_jsonl

__all__ = ["ORIGIN_TEXTS", "fidelity_to_origin"]

ORIGIN_TEXTS = 256
MEASURED_TASKS = ("text-embedding", "text-classification")


def _texts(dataset: str | None) -> tuple[list[str], str]:
    if dataset:
        return [e.text for e in load_jsonl(dataset)][:ORIGIN_TEXTS], "evaluation dataset"
    from compression.pipeline.corpus import build_corpus

    corpus = build_corpus(limit=ORIGIN_TEXTS, held_out_limit=ORIGIN_TEXTS)
    return corpus.held_out, "built-in corpus (held-out split)"


def _not_measured(reason: str) -> dict[str, Any]:
    return {"measured": False, "reason": reason}


def fidelity_to_origin(
    origin: str,
    child: str,
    task: str,
    dataset: str | None = None,
    dataset_kind: str | None = None,
    output: str | None = None,
    child_output: str | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """``child`` against ``origin`` (the lineage's root) on the primary outputs (``output``
    for the origin, ``child_output`` for the child). Returns the fidelity record
    (cosine and neighbour agreement, or prediction agreement) with "measured": True and
    "inputs", or "measured": False and the reason."""
    if task not in MEASURED_TASKS:
        return _not_measured(f"fidelity to the original is measured for text models, not {task}")
    if dataset_kind == "tensors-npz":
        return _not_measured("the evaluation dataset holds tensors, not text")
    tokenizer = find_tokenizer(child, origin)
    if tokenizer is None:
        return _not_measured("no tokenizer to turn the held-out text into inputs")
    run_origin, origin_session = model_runner(Path(origin), task, output, threads)
    run_child, child_session = model_runner(Path(child), task, child_output, threads)
    texts, source = _texts(dataset)
    length = feed_length(child_session, origin_session, probe=True)
    feeds = text_feeds(tokenizer, texts, length)
    ref = [run_origin(f) for f in feeds]
    cand = [run_child(f) for f in feeds]
    checked = sanity(ref, cand, same_weights=False)
    if not checked["measured"]:
        return checked
    if task == "text-embedding" and ref[0].shape[-1] != cand[0].shape[-1]:
        return {**_neighbour_ranks(ref, cand, feeds), **checked, "inputs": source}
    return {**fidelity_record(task, ref, cand, feeds, None), **checked, "inputs": source}


def _neighbour_ranks(
    ref: list[np.ndarray], cand: list[np.ndarray], feeds: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """A narrower student: no common space for a cosine, but the ranking of neighbours is
    comparable, and it is what a user searches by."""
    r = np.concatenate([pooled_embedding(o, f) for o, f in zip(ref, feeds, strict=True)])
    c = np.concatenate([pooled_embedding(o, f) for o, f in zip(cand, feeds, strict=True)])
    agree = nearest_neighbours(r) == nearest_neighbours(c)
    return {
        "nn_agreement": float(agree.mean()),
        "count": int(r.shape[0]),
        "compared_in": f"neighbour ranks only (width {c.shape[1]} vs {r.shape[1]})",
    }
