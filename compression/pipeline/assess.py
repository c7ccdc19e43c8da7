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
from compression.pipeline.feeds import accepted_length
from compression.pipeline.outputs import input_dicts, output_index, probe_feeds
from compression.pipeline.textdata import default_sentences, encode, load_jsonl, load_npz

TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")
GOLDEN_SIZE = 32
MAX_SEQ = 128


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
    # The probe's rules (masks all visible, a 16 kHz sample rate), one seed per row.
    # One generator across rows: the same seeded inputs on every machine and run.
    specs, rng = input_dicts(session), np.random.default_rng(seed)
    return [probe_feeds(specs, rng=rng) for _ in range(rows)]


def text_feeds(
    tokenizer: Path, texts: list[str], max_length: int = MAX_SEQ
) -> list[dict[str, np.ndarray]]:
    encoded = encode(tokenizer, texts, max_length=max_length)
    rows = [encoded.row(i) for i in range(len(texts))]
    return [dataclasses.asdict(row) for row in rows]


def _runner(session: Any, output: str | None) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Run `session` (fitting feeds to its graph) and return its `output` (primary)."""
    index = output_index([o.name for o in session.get_outputs()], output)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        result: np.ndarray = session.run(None, feed)[index]
        return result

    return run


def pooled_embedding(output: np.ndarray, feed: dict[str, np.ndarray]) -> np.ndarray:
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
            feeds = text_feeds(tokenizer, texts, max_length)
            return feeds, labels if has_labels else None, "dataset"
        return text_feeds(tokenizer, default_sentences(), max_length), None, "built-in sentences"
    return _synthetic_feeds(session, GOLDEN_SIZE * 4), None, "synthetic tensors"


def model_runner(
    path: Path, task: str, output: str | None, threads: int
) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], Any]:
    """A runner for a Hugging Face folder (PyTorch) or an ONNX/TFLite model returning its
    `output`, and its session (None for PyTorch) for the shapes it accepts."""
    if _is_hf_dir(path):
        return _torch_runner(path, task), None
    session = open_session(_onnx_file(path), threads)
    return _runner(session, output), session


def feed_length(child_session: Any, other_session: Any, probe: bool) -> int:
    """The token length both models accept: a fixed-shape model's own (the shorter one),
    else what the child accepts up to MAX_SEQ when ``probe`` (text models), else MAX_SEQ."""
    sessions = [s for s in (child_session, other_session) if s is not None]
    fixed = [f for f in (getattr(s, "fixed_sequence", None) for s in sessions) if f]
    if fixed:
        return min(*fixed, MAX_SEQ)
    if probe and child_session is not None:
        return min(accepted_length(child_session, MAX_SEQ), MAX_SEQ)
    return MAX_SEQ


def fidelity_record(
    task: str,
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    labels: list[Any] | None,
) -> dict[str, Any]:
    if any(np.asarray(r).dtype.kind in "iub" for r in ref):
        # Label ids (or any integers) are compared for equality, never as floats.
        same = [bool(np.array_equal(r, c)) for r, c in zip(ref, cand, strict=True)]
        return {"agreement": float(np.mean(same)), "count": len(same), "metric": "exact"}
    if task == "text-embedding":
        r = np.concatenate([pooled_embedding(o, f) for o, f in zip(ref, feeds, strict=True)])
        c = np.concatenate([pooled_embedding(o, f) for o, f in zip(cand, feeds, strict=True)])
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
    if task == "text-embedding" and all(np.asarray(r).dtype.kind == "f" for r in ref):
        cos = [
            float((pooled_embedding(r, f) * pooled_embedding(c, f)).sum())
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
    output: str | None = None,
    child_output: str | None = None,
) -> dict[str, Any]:
    """Fidelity of the ONNX or TFLite `child` to `parent` (ONNX, or a Hugging Face folder run in
    PyTorch), plus the golden set written to `golden_path`, both on the primary `output`
    (`child_output` when a converter renamed it; None: the first output). Returns {"fidelity",
    "golden": {"sha256", "count", "tolerance"}, "inputs", "examples"} and, for
    classifiers, "reference_confidence" ({"edges", "counts", "count"}).

    Raises:
        ValueError: no model found, or inputs that do not fit the model.
    """
    child_session = open_session(_onnx_file(Path(child)), threads)
    run_child = _runner(child_session, child_output or output)
    run_parent, parent_session = model_runner(Path(parent), task, output, threads)
    spec_session = parent_session or child_session
    tokenizer = find_tokenizer(child, parent)
    max_length = feed_length(child_session, parent_session, probe=task in TEXT_TASKS)
    feeds, labels, source = _inputs(
        spec_session, task, tokenizer, dataset, dataset_kind, max_length
    )
    ref = [run_parent(f) for f in feeds]
    cand = [run_child(f) for f in feeds]
    fidelity = fidelity_record(task, ref, cand, feeds, labels)
    fidelity["output"] = child_output or output  # the child's output: what the comparison checks
    fidelity.update(sanity(ref, cand, _same_weights(parent, child)))
    return golden_result(task, ref, cand, feeds, fidelity, source, golden_path)


def golden_result(
    task: str,
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    fidelity: dict[str, Any],
    source: str,
    golden_path: str,
) -> dict[str, Any]:
    """Write the golden set (the parent's outputs on the first examples, with the
    tolerance the child showed) and return the assessment every assessor reports."""
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


__all__ = [
    "assess",
    "feed_length",
    "fidelity_record",
    "find_tokenizer",
    "model_runner",
    "pooled_embedding",
    "sanity",
    "text_feeds",
    "write_golden",
]


def sanity(ref: list[np.ndarray], cand: list[np.ndarray], same_weights: bool) -> dict[str, Any]:
    """{"measured": True} when the figure means something, else False and the reason.

    A perfect score from a model whose weights changed says the measured output does
    not depend on them; an output that is the same for every input cannot tell a good
    model from a broken one. Either way the figure is "not measured", never ★.
    """
    flat_r = [np.asarray(r, dtype=np.float64).reshape(-1) for r in ref]
    flat_c = [np.asarray(c, dtype=np.float64).reshape(-1) for c in cand]
    if not all(np.all(np.isfinite(c)) for c in flat_c):
        return {"measured": False, "reason": "the derived model returns NaN or infinity"}
    same_shape = len(flat_r) > 1 and all(r.shape == flat_r[0].shape for r in flat_r)
    if same_shape and all(np.array_equal(r, flat_r[0]) for r in flat_r[1:]):
        return {
            "measured": False,
            "reason": "the parent's output is the same for every input (constant output)",
        }
    identical = all(np.array_equal(r, c) for r, c in zip(flat_r, flat_c, strict=True))
    if identical and not same_weights:
        return {
            "measured": False,
            "reason": "a perfect score although the weights changed: the measured output does "
            "not depend on them (an echo of the input?); choose another primary output",
        }
    return {"measured": True}


def _same_weights(parent: str, child: str) -> bool:
    """True when parent and child hold the same model bytes (a pure re-packaging)."""
    try:
        a, b = Path(_onnx_file(Path(parent))), Path(_onnx_file(Path(child)))
    except ValueError:
        return False
    if a.suffix != b.suffix or a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


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
