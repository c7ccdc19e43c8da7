"""Measure a derived model against its parent: fidelity on evaluation data, and the
golden set the device replays as its self-test. Pure functions (no Django); the server
runs `assess` in a subprocess through `compression.pipeline.runner`.

Inputs come from the evaluation dataset when given, else the built-in sentence set (text
models with a tokenizer) or seeded synthetic tensors shaped from the model's inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.evaluate import (
    classifier_fidelity,
    confidence_histogram,
    embedding_fidelity,
    l2_normalize,
    mean_pool,
    open_session,
    tensor_fidelity,
)
from compression.pipeline.textdata import default_sentences, encode, load_jsonl, load_npz

TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")
GOLDEN_SIZE = 32
MAX_SEQ = 128
_INT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def find_tokenizer(*paths: str | Path | None) -> Path | None:
    """tokenizer.json in or beside any of the given model paths."""
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw)
        folder = path if path.is_dir() else path.parent
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    return None


def _onnx_file(path: Path) -> Path:
    """The model file of a path: the file itself, or the .onnx (else .tflite) in a folder."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.onnx")) or sorted(path.glob("*.tflite"))
    if not found:
        raise ValueError(f"no .onnx or .tflite model in {path}")
    return found[0]


def _synthetic_feeds(session: Any, rows: int, seed: int = 7) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(rows):
        feed: dict[str, np.ndarray] = {}
        for spec in session.get_inputs():
            shape = [
                d if isinstance(d, int) and d > 0 else (1 if i == 0 else 16)
                for i, d in enumerate(spec.shape)
            ]
            if spec.type in _INT_DTYPES:
                value: np.ndarray
                if "mask" in spec.name:
                    value = np.ones(shape)
                elif "type" in spec.name:
                    value = np.zeros(shape)
                else:
                    value = rng.integers(0, 100, size=shape)
                feed[spec.name] = value.astype(_INT_DTYPES[spec.type])
            else:
                feed[spec.name] = rng.standard_normal(shape).astype(np.float32)
        feeds.append(feed)
    return feeds


def _text_feeds(
    tokenizer: Path, texts: list[str], max_length: int = MAX_SEQ
) -> list[dict[str, np.ndarray]]:
    encoded = encode(tokenizer, texts, max_length=max_length)
    rows = [encoded.row(i) for i in range(len(texts))]
    return [dataclasses.asdict(row) for row in rows]


def _run(session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    output: np.ndarray = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
    return output


def _embedding(output: np.ndarray, feed: dict[str, np.ndarray]) -> np.ndarray:
    if output.ndim == 3:
        mask = feed.get("attention_mask", np.ones(output.shape[:2], dtype=np.int64))
        output = mean_pool(output, mask)
    return l2_normalize(output.reshape(output.shape[0], -1))


def _inputs(
    session: Any,
    task: str,
    tokenizer: Path | None,
    dataset: str | None,
    kind: str | None,
    max_length: int = MAX_SEQ,
) -> tuple[list[dict[str, np.ndarray]], list[Any] | None, str]:
    """Feeds, labels (or None) and a description of where the inputs came from.

    Texts are cut to ``max_length`` tokens: a fixed-shape child (TFLite) sees no more,
    so the parent must not either.
    """
    if dataset and kind == "tensors-npz":
        arrays = load_npz(dataset, [i.name for i in session.get_inputs()])
        rows = len(next(iter(arrays.values())))
        return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(rows)], None, "dataset"
    if tokenizer is not None and task in TEXT_TASKS:
        if dataset:
            examples = load_jsonl(dataset)
            texts, labels = [e.text for e in examples], [e.label for e in examples]
            has_labels = all(label is not None for label in labels)
            feeds = _text_feeds(tokenizer, texts, max_length)
            return feeds, labels if has_labels else None, "dataset"
        return _text_feeds(tokenizer, default_sentences(), max_length), None, "built-in sentences"
    return _synthetic_feeds(session, GOLDEN_SIZE * 4), None, "synthetic tensors"


def _fidelity(
    task: str,
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    labels: list[Any] | None,
) -> dict[str, Any]:
    if task == "text-embedding":
        r = np.concatenate([_embedding(o, f) for o, f in zip(ref, feeds, strict=True)])
        c = np.concatenate([_embedding(o, f) for o, f in zip(cand, feeds, strict=True)])
        return dataclasses.asdict(embedding_fidelity(r, c))
    if task == "text-classification":
        r = np.concatenate([o.reshape(o.shape[0], -1) for o in ref])
        c = np.concatenate([o.reshape(o.shape[0], -1) for o in cand])
        return dataclasses.asdict(classifier_fidelity(r, c, labels))
    flat_r = np.concatenate([o.reshape(1, -1) for o in ref])
    flat_c = np.concatenate([o.reshape(1, -1) for o in cand])
    return dataclasses.asdict(tensor_fidelity(flat_r, flat_c))


def _tolerance(
    task: str, ref: list[np.ndarray], cand: list[np.ndarray], feeds: list[dict[str, np.ndarray]]
) -> dict[str, float]:
    """A per-example bound the candidate met here, with headroom for other CPUs/runtimes."""
    if task == "text-embedding":
        cos = [
            float((_embedding(r, f) * _embedding(c, f)).sum())
            for r, c, f in zip(ref, cand, feeds, strict=True)
        ]
        return {"min_cosine": round(max(0.0, min(cos) - 0.01), 4)}
    worst = max(
        float(np.abs(r.astype(np.float64) - c).max()) for r, c in zip(ref, cand, strict=True)
    )
    scale = max(float(np.abs(r).max()) for r in ref) or 1.0
    return {"max_abs_error": round(max(worst * 2.0, 1e-3 * scale), 6)}


def write_golden(
    path: Path,
    feeds: list[dict[str, np.ndarray]],
    ref: list[np.ndarray],
    task: str,
    tolerance: dict[str, float],
) -> str:
    """Save the golden set (.npz: per-example inputs and parent outputs) and its sha256."""
    arrays: dict[str, np.ndarray] = {}
    for i, (feed, out) in enumerate(zip(feeds, ref, strict=True)):
        for name, value in feed.items():
            arrays[f"{i}/input/{name}"] = value
        arrays[f"{i}/reference"] = out
    meta = {"task": task, "count": len(feeds), "tolerance": tolerance, "format": 1}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # uncompressed: cheap on devices
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assess(
    parent: str,
    child: str,
    task: str,
    golden_path: str,
    dataset: str | None = None,
    dataset_kind: str | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Fidelity of the ONNX or TFLite `child` to `parent` (ONNX, or a Hugging Face folder run in
    PyTorch), plus the golden set written to `golden_path`. Returns {"fidelity",
    "golden": {"sha256", "count", "tolerance"}, "inputs", "examples"} and, for
    classifiers, "reference_confidence" ({"edges", "counts", "count"}).

    Raises:
        ValueError: no model found, or inputs that do not fit the model.
    """
    child_session = open_session(_onnx_file(Path(child)), threads)
    if _is_hf_dir(Path(parent)):
        spec_session, run_parent = child_session, _torch_runner(Path(parent), task)
    else:
        spec_session = open_session(_onnx_file(Path(parent)), threads)
        run_parent = lambda feed: _run(spec_session, feed)  # noqa: E731
    tokenizer = find_tokenizer(child, parent)
    max_length = getattr(child_session, "fixed_sequence", None) or MAX_SEQ
    feeds, labels, source = _inputs(
        spec_session, task, tokenizer, dataset, dataset_kind, min(max_length, MAX_SEQ)
    )
    ref = [run_parent(f) for f in feeds]
    cand = [_run(child_session, f) for f in feeds]
    fidelity = _fidelity(task, ref, cand, feeds, labels)
    golden = min(GOLDEN_SIZE, len(feeds))
    tolerance = _tolerance(task, ref[:golden], cand[:golden], feeds[:golden])
    digest = write_golden(Path(golden_path), feeds[:golden], ref[:golden], task, tolerance)
    result: dict[str, Any] = {
        "fidelity": fidelity,
        "golden": {"sha256": digest, "count": golden, "tolerance": tolerance},
        "inputs": source,
        "examples": len(feeds),
    }
    if task == "text-classification":
        # The derived model's own confidences on the evaluation data: what in-field
        # confidence drift (PSI) is measured against.
        result["reference_confidence"] = confidence_histogram(np.concatenate(cand))
    return result


__all__ = ["assess", "find_tokenizer", "write_golden"]


def _is_hf_dir(path: Path) -> bool:
    models = [*path.glob("*.onnx"), *path.glob("*.tflite")] if path.is_dir() else []
    return path.is_dir() and (path / "config.json").is_file() and not models


def _torch_runner(model_dir: Path, task: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The original PyTorch model as the reference (export-onnx's parent)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the folder, never a hub
    import torch
    import transformers

    loader = (
        transformers.AutoModelForSequenceClassification
        if task == "text-classification"
        else transformers.AutoModel
    )
    model = loader.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        tensor = out.logits if task == "text-classification" else out.last_hidden_state
        result: np.ndarray = tensor.numpy()
        return result

    return run


def onnx_model_file(path: str | Path) -> str:
    """The .onnx file of a model path (the file itself or the one in its folder)."""
    return str(_onnx_file(Path(path)))


def compare_latency_json(parent: str, child: str, threads: int = 1) -> dict[str, float]:
    """Child/parent batch-1 latency ratio, both timed interleaved in one process."""
    from compression.pipeline.benchmark import compare_latency

    paths = [onnx_model_file(parent), onnx_model_file(child)]
    medians = compare_latency(paths, threads=threads)
    parent_s, child_s = medians[paths[0]], medians[paths[1]]
    return {"parent_s": parent_s, "child_s": child_s, "ratio": child_s / parent_s}
