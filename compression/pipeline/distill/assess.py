"""Assess a Hugging Face child (a distilled or pruned student) against its Hugging Face
parent, both run in PyTorch: fidelity on held-out real text, and the golden set.

Without an evaluation dataset the inputs are the built-in corpus's held-out sentences
(never trained on). A narrower student is compared with the teacher's states projected
onto its space (``teacher_projection.safetensors``); neighbour agreement, which needs no
common space, is computed as well.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.assess import MAX_SEQ, golden_result
from compression.pipeline.evaluate import (
    classifier_fidelity,
    embedding_fidelity,
    mean_pool,
    nearest_neighbours,
)
from compression.pipeline.textdata import encode, load_jsonl

__all__ = ["HELD_OUT_TEXTS", "assess_student"]

HELD_OUT_TEXTS = 256


def _load(path: Path, task: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    loader = (
        transformers.AutoModelForSequenceClassification
        if task == "text-classification"
        else transformers.AutoModel
    )
    model = loader.from_pretrained(str(path), attn_implementation="eager", local_files_only=True)
    model.eval()
    return model


def _texts(dataset: str | None) -> tuple[list[str], list[Any] | None, str]:
    if dataset:
        examples = load_jsonl(dataset)
        labels = [e.label for e in examples]
        return (
            [e.text for e in examples],
            labels if all(x is not None for x in labels) else None,
            "dataset",
        )
    from compression.pipeline.corpus import build_corpus

    corpus = build_corpus(limit=HELD_OUT_TEXTS, held_out_limit=HELD_OUT_TEXTS)
    return corpus.held_out, None, "built-in corpus (held-out split)"


def assess_student(
    parent: str,
    child: str,
    task: str,
    golden_path: str,
    dataset: str | None = None,
    dataset_kind: str | None = None,
    threads: int = 1,
    output: str | None = None,
    child_output: str | None = None,
) -> dict[str, Any]:
    """Same result shape as ``compression.pipeline.assess.assess``. Teacher and student are
    Hugging Face folders measured on their pooled embedding (or logits), so `output` and
    `child_output` (ONNX output names) need no choosing. One thread by default:
    batch-1 forwards are many small operations, and a second thread on a busy machine makes
    each of them wait for its time slice.

    Raises:
        ValueError: a tensor dataset (students are text models) or an unreadable one.
    """
    import torch

    if dataset_kind == "tensors-npz":
        raise ValueError("a student is assessed on text; give a JSONL evaluation dataset")
    torch.set_num_threads(threads)
    teacher, student = _load(Path(parent), task), _load(Path(child), task)
    proj_file = Path(child) / "teacher_projection.safetensors"
    proj = None
    if proj_file.is_file():
        from safetensors.torch import load_file

        proj = load_file(str(proj_file))["projection"]
    texts, labels, source = _texts(dataset)
    tokenizer = Path(child) / "tokenizer.json"
    encoded = encode(tokenizer, texts, max_length=MAX_SEQ)
    feeds = [dataclasses.asdict(encoded.row(i)) for i in range(len(texts))]
    ref, cand = [], []
    with torch.no_grad():
        for feed in feeds:
            batch = {k: torch.from_numpy(v) for k, v in feed.items()}
            t_out, s_out = teacher(**batch), student(**batch)
            if task == "text-classification":
                ref.append(t_out.logits.numpy())
                cand.append(s_out.logits.numpy())
                continue
            hidden = t_out.last_hidden_state
            ref.append((hidden @ proj.T if proj is not None else hidden).numpy())
            cand.append(s_out.last_hidden_state.numpy())
    fidelity = _fidelity(task, ref, cand, feeds, labels, teacher, proj)
    return golden_result(task, ref, cand, feeds, fidelity, source, golden_path)


def _pooled(outputs: list[np.ndarray], feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate(
        [mean_pool(o, f["attention_mask"]) for o, f in zip(outputs, feeds, strict=True)]
    )


def _fidelity(
    task: str,
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    labels: list[Any] | None,
    teacher: Any,
    proj: Any,
) -> dict[str, Any]:
    if task == "text-classification":
        return dataclasses.asdict(
            classifier_fidelity(np.concatenate(ref), np.concatenate(cand), labels)
        )
    fid = dataclasses.asdict(embedding_fidelity(_pooled(ref, feeds), _pooled(cand, feeds)))
    if proj is not None:
        # Neighbours under the full teacher, not its projection: what users rank by.
        import torch

        with torch.no_grad():
            full = [
                teacher(**{k: torch.from_numpy(v) for k, v in f.items()}).last_hidden_state.numpy()
                for f in feeds
            ]
        fid["nn_agreement"] = float(
            (
                nearest_neighbours(_pooled(full, feeds)) == nearest_neighbours(_pooled(cand, feeds))
            ).mean()
        )
        fid["compared_in"] = "teacher states projected onto the student's width"
    return fid
