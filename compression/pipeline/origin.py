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

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.assess import (
    MAX_SEQ,
    find_tokenizer,
    is_hf_dir,
    model_file,
    output_runner,
    pooled_embedding,
    text_feeds,
    torch_runner,
)
from compression.pipeline.evaluate import (
    classifier_fidelity,
    embedding_fidelity,
    nearest_neighbours,
    open_session,
)
from compression.pipeline.feeds import accepted_length
from compression.pipeline.textdata import load_jsonl

__all__ = ["ORIGIN_TEXTS", "fidelity_to_origin"]

ORIGIN_TEXTS = 256
MEASURED_TASKS = ("text-embedding", "text-classification")

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


def _model(path: Path, task: str, output: str | None, threads: int) -> tuple[Run, Any]:
    """A runner for a Hugging Face folder (PyTorch) or an ONNX/TFLite file, and its
    session (None for PyTorch) so fixed sequence lengths can be honoured."""
    if is_hf_dir(path):
        return torch_runner(path, task), None
    session = open_session(model_file(path), threads)
    return output_runner(session, output), session


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
    run_origin, origin_session = _model(Path(origin), task, output, threads)
    run_child, child_session = _model(Path(child), task, child_output, threads)
    sessions = [s for s in (child_session, origin_session) if s is not None]
    fixed = [f for f in (getattr(s, "fixed_sequence", None) for s in sessions) if f]
    length = min(fixed or [MAX_SEQ])
    if child_session is not None and not fixed:
        length = accepted_length(child_session, length)
    texts, source = _texts(dataset)
    feeds = text_feeds(tokenizer, texts, min(length, MAX_SEQ))
    ref = [run_origin(f) for f in feeds]
    cand = [run_child(f) for f in feeds]
    if task == "text-classification":
        r = np.concatenate([o.reshape(o.shape[0], -1) for o in ref])
        c = np.concatenate([o.reshape(o.shape[0], -1) for o in cand])
        if r.shape != c.shape:
            return _not_measured(f"the outputs differ in shape ({r.shape} vs {c.shape})")
        record = dataclasses.asdict(classifier_fidelity(r, c))
    else:
        r = np.concatenate([pooled_embedding(o, f) for o, f in zip(ref, feeds, strict=True)])
        c = np.concatenate([pooled_embedding(o, f) for o, f in zip(cand, feeds, strict=True)])
        if r.shape == c.shape:
            record = dataclasses.asdict(embedding_fidelity(r, c))
        else:
            # A narrower student: no common space for a cosine, but the ranking of
            # neighbours is comparable, and it is what a user searches by.
            agree = nearest_neighbours(r) == nearest_neighbours(c)
            record = {
                "nn_agreement": float(agree.mean()),
                "count": int(r.shape[0]),
                "compared_in": f"neighbour ranks only (width {c.shape[1]} vs {r.shape[1]})",
            }
    if not np.all(np.isfinite(c)):
        return _not_measured("the derived model returns NaN or infinity")
    return {**record, "measured": True, "inputs": source}
