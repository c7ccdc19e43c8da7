"""Text in, tensors out, and back: tokenization and post-processing.

Everything here is numpy and `tokenizers` only, so the golden-set self-test
and the predictor pool and score outputs in exactly the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Encoded",
    "TextEncoder",
    "classify",
    "l2_normalize",
    "pool",
    "softmax",
    "tag_tokens",
]

# Fallback pad tokens, tried in order, when tokenizer.json has no padding config.
_PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch: model feeds plus what post-processing needs."""

    feeds: dict[str, np.ndarray]
    lengths: list[int]
    tokens: list[list[str]]
    offsets: list[list[tuple[int, int]]]
    special: list[list[int]]


class TextEncoder:
    """The bundle's tokenizer.json, truncating to `max_seq_len`.

    Batch 1 is never padded (padding is wasted compute and, for models without
    a mask-aware graph, a different answer); batches pad to their longest.
    """

    def __init__(self, path: Path, max_seq_len: int) -> None:
        tokenizers: Any = importlib.import_module("tokenizers")
        self._tok = tokenizers.Tokenizer.from_file(str(path))
        configured = self._tok.padding
        # tokenizer.json often ships padding to a fixed length: switch it off
        # and pad by hand so batch 1 sees exactly its own tokens.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_len)
        self.pad_id = self._pad_id(configured)
        self.max_seq_len = max_seq_len

    def _pad_id(self, configured: dict[str, Any] | None) -> int:
        if configured and isinstance(configured.get("pad_id"), int):
            return int(configured["pad_id"])
        for token in _PAD_TOKENS:
            found = self._tok.token_to_id(token)
            if found is not None:
                return int(found)
        return 0

    def encode(self, texts: Sequence[str], *, details: bool = False) -> Encoded:
        """Tokenize; `details` also keeps tokens, offsets and the special-token
        mask (token classification needs them; skipping saves ~50 us a call)."""
        encodings = (
            [self._tok.encode(texts[0])] if len(texts) == 1 else self._tok.encode_batch(texts)
        )
        lengths = [len(e.ids) for e in encodings]
        width = max(lengths)
        batch = len(encodings)
        ids = np.full((batch, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        types = np.zeros((batch, width), dtype=np.int64)
        for row, (enc, n) in enumerate(zip(encodings, lengths, strict=True)):
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        return Encoded(
            feeds={"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
            lengths=lengths,
            tokens=[list(e.tokens) for e in encodings] if details else [],
            offsets=[[(int(a), int(b)) for a, b in e.offsets] for e in encodings]
            if details
            else [],
            special=[list(e.special_tokens_mask) for e in encodings] if details else [],
        )


def _align(hidden: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Match a fixed-shape model's positions to the real tokens.

    Longer output: drop the positions the runtime padded. Shorter output: the
    runtime truncated the input to the model's static length, so only that
    many tokens count.
    """
    seq = min(hidden.shape[1], mask.shape[1])
    return hidden[:, :seq], mask[:, :seq]


def pool(hidden: np.ndarray, mask: np.ndarray | None, mode: str) -> np.ndarray:
    """Pool token vectors [batch, seq, dim] to [batch, dim].

    A rank-2 output was pooled inside the graph (TFLite exports do that) and
    is returned as is, whatever `mode` says.
    """
    hidden = np.asarray(hidden, dtype=np.float32)
    if hidden.ndim == 2:
        return hidden
    if hidden.ndim != 3:
        raise ValueError(f"cannot pool an output of rank {hidden.ndim}")
    if mask is None:
        mask = np.ones(hidden.shape[:2], dtype=np.int64)
    hidden, mask = _align(hidden, mask)
    weights = mask.astype(np.float32)[:, :, None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.asarray(np.where(weights > 0, hidden, -np.inf).max(axis=1), dtype=np.float32)
    if mode in ("mean", "none"):
        # "none" with token vectors still needs one vector per text.
        total = (hidden * weights).sum(axis=1)
        return np.asarray(total / np.maximum(weights.sum(axis=1), 1e-9), dtype=np.float32)
    raise ValueError(f"unknown pooling {mode!r}")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted.astype(np.float64))
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True), dtype=np.float32)


def _label_names(labels: Sequence[str], count: int) -> list[str]:
    # A record without (or with mismatched) labels still gives stable names.
    return list(labels) if len(labels) == count else [f"LABEL_{i}" for i in range(count)]


def classify(
    logits: np.ndarray, labels: Sequence[str], threshold: float | None
) -> list[dict[str, Any]]:
    """Softmax over [batch, classes] logits -> label, confidence, scores."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"classification wants [batch, classes] logits, got {logits.shape}")
    probs = softmax(logits)
    names = _label_names(labels, probs.shape[1])
    results = []
    for row in probs:
        best = int(row.argmax())
        confidence = float(row[best])
        results.append(
            {
                "label": names[best],
                "confidence": confidence,
                "low_confidence": threshold is not None and confidence < threshold,
                "scores": {name: float(p) for name, p in zip(names, row, strict=True)},
            }
        )
    return results


def tag_tokens(
    logits: np.ndarray, encoded: Encoded, labels: Sequence[str], threshold: float | None
) -> list[dict[str, Any]]:
    """Per-token labels for [batch, seq, classes] logits, special tokens dropped."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 3:
        raise ValueError(f"token classification wants rank-3 logits, got {logits.shape}")
    logits, _ = _align(logits, encoded.feeds["attention_mask"])
    probs = softmax(logits)
    names = _label_names(labels, probs.shape[2])
    results = []
    for row, n in enumerate(encoded.lengths):
        tags: list[dict[str, Any]] = []
        for pos in range(min(n, probs.shape[1])):
            if encoded.special[row][pos]:
                continue
            best = int(probs[row, pos].argmax())
            start, end = encoded.offsets[row][pos]
            tags.append(
                {
                    "token": encoded.tokens[row][pos],
                    "start": start,
                    "end": end,
                    "label": names[best],
                    "confidence": float(probs[row, pos, best]),
                }
            )
        low = threshold is not None and any(float(t["confidence"]) < threshold for t in tags)
        results.append({"tokens": tags, "low_confidence": low})
    return results
