"""Tiny teachers and training texts for the distillation and pruning tests."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from tests.fixtures.tiny_models import build_tiny_hf_dir

WORDS = [
    "the",
    "a",
    "edge",
    "device",
    "model",
    "tiny",
    "fleet",
    "runs",
    "fast",
    "on",
    "small",
    "chips",
]


def texts(count: int, seed: int = 0) -> list[str]:
    """Distinct texts over the tiny tokenizer's vocabulary (so they are not all [UNK])."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def write_jsonl(path: Path, rows: list[str], labels: list[int] | None = None) -> Path:
    lines = [
        json.dumps({"text": t, **({"label": labels[i]} if labels else {})})
        for i, t in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def build_teacher(path: Path, *, layers: int = 4, hidden: int = 32, heads: int = 4) -> Path:
    """A BERT embedding teacher (random weights, real tokenizer) as an HF folder."""
    return build_tiny_hf_dir(path, layers=layers, hidden=hidden, heads=heads)


def build_classifier_teacher(path: Path, *, layers: int = 4, labels: int = 3) -> Path:
    """A BertForSequenceClassification teacher with the tiny tokenizer."""
    import torch
    import transformers

    base = build_teacher(path.parent / f"{path.name}-base", layers=layers)
    config = transformers.BertConfig.from_pretrained(str(base))
    config.num_labels = labels
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(str(path), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copyfile(base / name, path / name)
    shutil.rmtree(base)
    return path


def build_decoder(path: Path) -> Path:
    """A tiny GPT-2 (a decoder): not something a BERT student can be taken from."""
    import torch
    import transformers

    base = build_teacher(path.parent / f"{path.name}-tok")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)
    config.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(path), safe_serialization=True)
    shutil.copyfile(base / "tokenizer.json", path / "tokenizer.json")
    shutil.rmtree(base)
    return path
