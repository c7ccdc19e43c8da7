"""Fidelity of a ``tflm`` model to its parent, measured on the TFLite Micro interpreter,
and the golden set a device replays. The parent is the unmodified Hugging Face model in
PyTorch (original GELU, float), fed the same tokens (truncated to the micro model's
fixed length; the micro model cannot see further)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.evaluate import classifier_fidelity, embedding_fidelity
from compression.pipeline.golden import build_golden, golden_tolerance
from compression.pipeline.textdata import default_sentences, load_jsonl
from compression.pipeline.tflm import micro, torch_side
from compression.pipeline.tflm.quantize import text_feeds
from compression.pipeline.tflm.recipe import MODEL_FILE, torch_outputs

__all__ = ["assess_tflm"]

GOLDEN_SIZE = 32
TASKS = {"text-embedding": "embedding", "text-classification": "classifier"}


def _model_file(child: Path) -> Path:
    path = child / MODEL_FILE if child.is_dir() else child
    if not path.is_file():
        raise ValueError(f"no {MODEL_FILE} in {child}")
    return path


def _texts(dataset: str | None, kind: str | None) -> tuple[list[str], list[Any] | None, str]:
    if not dataset:
        return default_sentences(), None, "built-in sentences"
    if kind == "tensors-npz":
        raise ValueError("tflm models take text; evaluate them on a JSONL text dataset")
    examples = load_jsonl(dataset)
    labels = [e.label for e in examples]
    has_labels = all(label is not None for label in labels)
    return [e.text for e in examples], labels if has_labels else None, "dataset"


def assess_tflm(
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
    """Same contract as ``assess.assess``: {"fidelity", "golden", "inputs", "examples"}.
    The TFLM graph has one output, so `output` and `child_output` need no choosing.

    Raises:
        ValueError: unsupported task, missing model or tokenizer, tensor datasets.
    """
    if task not in TASKS:
        raise ValueError(f"tflm models are evaluated as {', '.join(TASKS)}, not {task!r}")
    model = _model_file(Path(child)).read_bytes()
    tokenizer = Path(child) / "tokenizer.json"
    if not tokenizer.is_file():
        tokenizer = Path(parent) / "tokenizer.json"
    runner = micro.MicroModel(model)
    length = micro.graph_summary(model).inputs[0]["shape"][1]
    texts, labels, source = _texts(dataset, dataset_kind)
    feeds = text_feeds(tokenizer, texts, length)
    reference_model = torch_side.micro_wrapper(
        torch_side.load_model(Path(parent), TASKS[task]), TASKS[task]
    )
    reference = torch_outputs(reference_model, feeds)
    candidate = np.concatenate([runner.run(feed) for feed in feeds])
    if task == "text-embedding":
        fidelity = embedding_fidelity(reference, candidate).to_dict()
    else:
        fidelity = classifier_fidelity(reference, candidate, labels).to_dict()
    fidelity["sequence_length"] = length
    count = min(GOLDEN_SIZE, len(feeds))
    device_feeds = [runner.feed_tensors(f) for f in feeds[:count]]
    refs = [reference[i : i + 1] for i in range(count)]
    cands = [candidate[i : i + 1] for i in range(count)]
    tolerance = golden_tolerance(task, refs, cands, device_feeds)
    digest = build_golden(golden_path, device_feeds, refs, task, tolerance)
    return {
        "fidelity": fidelity,
        "golden": {"sha256": digest, "count": count, "tolerance": tolerance},
        "inputs": source,
        "examples": len(feeds),
    }
