"""The data each candidate is measured on, and its fidelity to the parent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compression.pipeline import evaluate as ev
from compression.pipeline.auto_int8.candidates import AutoInt8Params
from compression.pipeline.quantize import (
    model_input_names,
)
from compression.pipeline.textdata import (
    DatasetError,
    default_sentences,
    encode,
    load_jsonl,
    load_npz,
)

# --------------------------------------------------------------------------
# Evaluation data


@dataclass
class EvalSet:
    task: str  # embedding | classifier | tensor
    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    reference: np.ndarray | None = None


def _detect_task(model: onnx.ModelProto, text: bool) -> str:
    out = model.graph.output[0]
    rank = len(out.type.tensor_type.shape.dim)
    if text and (out.name == "last_hidden_state" or rank == 3):
        return "embedding"
    if text and (out.name == "logits" or rank == 2):
        return "classifier"
    return "tensor"


def _text_feeds(
    tokenizer: str, texts: list[str], names: list[str], max_length: int
) -> list[dict[str, np.ndarray]]:
    # Batch 1 and no padding: dynamic quantization picks its range per call,
    # so this is what a device running one request at a time computes.
    enc = encode(tokenizer, texts, max_length=max_length)
    return [enc.row(i).feeds(names) for i in range(len(texts))]


def _npz_feeds(path: str, names: list[str], limit: int) -> list[dict[str, np.ndarray]]:
    arrays = load_npz(path, names)
    count = min(next(iter(arrays.values())).shape[0], limit)
    return [{n: arrays[n][i : i + 1] for n in names} for i in range(count)]


def load_sets(
    model_path: str,
    model: onnx.ModelProto,
    params: AutoInt8Params,
    tokenizer_path: str | None,
    calibration_path: str | None,
    eval_path: str | None,
    logs: list[str],
) -> tuple[list[dict[str, np.ndarray]], EvalSet]:
    names = model_input_names(model_path)
    if tokenizer_path is None and (Path(model_path).parent / "tokenizer.json").is_file():
        tokenizer_path = str(Path(model_path).parent / "tokenizer.json")
    if tokenizer_path is None:
        if calibration_path is None:
            raise DatasetError("a model without a tokenizer needs an .npz calibration set")
        calib = _npz_feeds(calibration_path, names, params.calibration_samples)
        evals = _npz_feeds(eval_path or calibration_path, names, params.eval_samples)
        if eval_path is None:
            logs.append("warning: no evaluation set; fidelity measured on the calibration set")
        return calib, EvalSet("tensor", evals, None)
    labels: np.ndarray | None = None
    if eval_path:
        examples = load_jsonl(eval_path)[: params.eval_samples]
        eval_texts = [e.text for e in examples]
        if examples[0].label is not None:
            labels = np.asarray([e.label for e in examples])
    else:
        eval_texts = default_sentences(params.eval_samples)
    if calibration_path:
        calib_texts = [e.text for e in load_jsonl(calibration_path)]
    else:
        calib_texts = default_sentences(params.calibration_samples * 2, seed=7)
    held_out = set(eval_texts)
    calib_texts = [t for t in calib_texts if t not in held_out][: params.calibration_samples]
    if not calib_texts:
        raise DatasetError("calibration set is empty once evaluation sentences are removed")
    if len(eval_texts) < 2:
        raise DatasetError("evaluation needs at least 2 examples")
    logs.append(
        f"calibration: {len(calib_texts)} texts; evaluation: {len(eval_texts)} texts (disjoint)"
    )
    task = _detect_task(model, text=True)
    calib = _text_feeds(tokenizer_path, calib_texts, names, params.max_length)
    evals = _text_feeds(tokenizer_path, eval_texts, names, params.max_length)
    return calib, EvalSet(task, evals, labels)


def model_outputs(path: str | Path, data: EvalSet) -> np.ndarray:
    session = ev.open_session(path, 1)
    rows = []
    for feed in data.feeds:
        out = session.run(None, feed)[0].astype(np.float32)
        if data.task == "embedding":
            rows.append(ev.mean_pool(out, feed["attention_mask"])[0])
        else:
            rows.append(out.reshape(-1) if data.task == "tensor" else out[0])
    result = np.stack(rows)
    return ev.l2_normalize(result) if data.task == "embedding" else result


def measure_fidelity(
    data: EvalSet, outputs: np.ndarray, params: AutoInt8Params
) -> tuple[dict[str, Any], bool]:
    assert data.reference is not None
    if data.task == "embedding":
        e = ev.embedding_fidelity(data.reference, outputs)
        ok = e.cosine_mean >= params.cosine_mean_min and e.nn_agreement >= params.nn_agreement_min
        return e.to_dict(), ok
    if data.task == "classifier":
        c = ev.classifier_fidelity(data.reference, outputs, data.labels)
        if c.accuracy_drop_points is not None:
            return c.to_dict(), c.accuracy_drop_points <= params.accuracy_drop_max_points
        return c.to_dict(), c.agreement >= params.agreement_min
    t = ev.tensor_fidelity(data.reference, outputs)
    rel = t.mean_abs_error / max(float(np.abs(data.reference).mean()), 1e-12)
    return {**t.to_dict(), "relative_error": rel}, rel <= params.tensor_rel_error_max


# --------------------------------------------------------------------------
# The recipe
