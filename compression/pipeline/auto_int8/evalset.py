"""The data each candidate is measured on, and its fidelity to the parent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compression.pipeline import evaluate as ev
from compression.pipeline.auto_int8.candidates import AutoInt8Params
from compression.pipeline.feeds import accepted_length
from compression.pipeline.outputs import output_index
from compression.pipeline.quantize import (
    model_input_names,
)
from compression.pipeline.realtext import real_texts
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
    output: str | None = None  # the primary output (None: the first)
    texts: list[str] | None = None


def _detect_task(model: onnx.ModelProto, text: bool, output: str | None) -> str:
    outputs = list(model.graph.output)
    index = output_index([o.name for o in outputs], output)
    out = outputs[index]
    rank = len(out.type.tensor_type.shape.dim)
    if text and (out.name == "last_hidden_state" or rank == 3):
        return "embedding"
    if text and out.name == "logits":
        return "classifier"
    if text and rank == 2:
        # A rank-2 float output of a text model is a pooled embedding unless the
        # operator's data says it classifies (labels); the primary output chose it.
        return "embedding"
    return "tensor"


def _text_feeds(tokenizer: str, texts: list[str], max_length: int) -> list[dict[str, np.ndarray]]:
    # Batch 1 and no padding: dynamic quantization picks its range per call, so this is
    # what a device running one request at a time computes. A fixed-shape graph gets
    # its padding and mask from the fitted session, as on the device.
    enc = encode(tokenizer, texts, max_length=max_length)
    return [enc.row(i).all_feeds() for i in range(len(texts))]


def _npz_feeds(path: str, names: list[str], limit: int) -> list[dict[str, np.ndarray]]:
    arrays = load_npz(path, names)
    count = min(next(iter(arrays.values())).shape[0], limit)
    return [{n: arrays[n][i : i + 1] for n in names} for i in range(count)]


@dataclass
class TextPlan:
    """Disjoint texts: selection (candidates are chosen on it), held-out (reported, and
    the tie-breaker), calibration."""

    selection: list[str]
    heldout: list[str]
    calibration: list[str]
    labels: np.ndarray | None
    heldout_labels: np.ndarray | None
    source: str


def plan_texts(
    params: AutoInt8Params, eval_path: str | None, calibration_path: str | None
) -> TextPlan:
    """Selection = generated sentences + real text (+ the operator's data); held-out =
    other real text (+ the operator's held-out part); calibration = the rest."""
    half = params.eval_samples // 2
    labels = heldout_labels = None
    if eval_path:
        examples = load_jsonl(eval_path)
        cut = max(2, len(examples) * 3 // 5) if len(examples) >= 5 else len(examples)
        chosen, kept = examples[:cut], examples[cut:]
        selection = [e.text for e in chosen][: params.eval_samples]
        heldout = [e.text for e in kept]
        if examples[0].label is not None:
            labels = np.asarray([e.label for e in chosen][: params.eval_samples])
            heldout_labels = np.asarray([e.label for e in kept]) if kept else None
        source = "operator dataset (selection and held-out split)"
        if heldout_labels is None and labels is None:
            # Embeddings: real text joins both sides so neither is only the operator's.
            selection += real_texts(half, 0)
            heldout += real_texts(params.heldout_samples, half)
            source = "operator dataset + real text"
    else:
        selection = default_sentences(half) + real_texts(half, 0)
        heldout = real_texts(params.heldout_samples, half)
        source = "generated sentences + real text (standard-library docstrings, package summaries)"
    if calibration_path:
        calibration = [e.text for e in load_jsonl(calibration_path)]
    else:
        start = half + params.heldout_samples
        calibration = default_sentences(params.calibration_samples, seed=7)
        calibration = calibration[: params.calibration_samples // 2]
        calibration += real_texts(params.calibration_samples - len(calibration), start)
    held = set(selection) | set(heldout)
    calibration = [t for t in calibration if t not in held][: params.calibration_samples]
    return TextPlan(selection, heldout, calibration, labels, heldout_labels, source)


def load_sets(
    model_path: str,
    model: onnx.ModelProto,
    params: AutoInt8Params,
    tokenizer_path: str | None,
    calibration_path: str | None,
    eval_path: str | None,
    logs: list[str],
    output: str | None = None,
) -> tuple[list[dict[str, np.ndarray]], EvalSet, EvalSet | None]:
    """Calibration feeds (fitted to the graph), the selection set and the held-out set."""
    names = model_input_names(model_path)
    fitted = ev.open_session(model_path, 1)
    if tokenizer_path is None and (Path(model_path).parent / "tokenizer.json").is_file():
        tokenizer_path = str(Path(model_path).parent / "tokenizer.json")
    if tokenizer_path is None:
        if calibration_path is None:
            raise DatasetError("a model without a tokenizer needs an .npz calibration set")
        calib = _npz_feeds(calibration_path, names, params.calibration_samples)
        evals = _npz_feeds(eval_path or calibration_path, names, params.eval_samples)
        if eval_path is None:
            logs.append("warning: no evaluation set; fidelity measured on the calibration set")
        return calib, EvalSet("tensor", evals, None, output=output), None
    plan = plan_texts(params, eval_path, calibration_path)
    if not plan.calibration:
        raise DatasetError("calibration set is empty once evaluation sentences are removed")
    if len(plan.selection) < 2:
        raise DatasetError("evaluation needs at least 2 examples")
    logs.append(
        f"selection: {len(plan.selection)} texts; held-out: {len(plan.heldout)} texts; "
        f"calibration: {len(plan.calibration)} texts (disjoint; {plan.source})"
    )
    task = _detect_task(model, True, output)
    if plan.labels is not None:
        task = "classifier"
    length = accepted_length(fitted, params.max_length)
    if length < params.max_length:
        logs.append(f"texts cut to {length} tokens: the longest sequence the graph accepts")
    calib = [fitted.fit(f) for f in _text_feeds(tokenizer_path, plan.calibration, length)]
    selection = EvalSet(
        task, _text_feeds(tokenizer_path, plan.selection, length), plan.labels, output=output
    )
    selection.texts = plan.selection
    heldout = None
    if len(plan.heldout) >= 2:
        heldout = EvalSet(
            task,
            _text_feeds(tokenizer_path, plan.heldout, length),
            plan.heldout_labels,
            output=output,
        )
        heldout.texts = plan.heldout
    return calib, selection, heldout


def model_outputs(path: str | Path, data: EvalSet) -> np.ndarray:
    session = ev.open_session(path, 1)
    index = output_index([o.name for o in session.get_outputs()], data.output)
    rows = []
    for feed in data.feeds:
        out = session.run(None, feed)[index].astype(np.float32)
        if data.task == "embedding":
            pooled = ev.mean_pool(out, feed["attention_mask"]) if out.ndim == 3 else out
            rows.append(pooled.reshape(pooled.shape[0], -1)[0])
        else:
            rows.append(out.reshape(-1) if data.task == "tensor" else out[0])
    result = np.stack(rows)
    return ev.l2_normalize(result) if data.task == "embedding" else result


def lower_bounds(fidelity: dict[str, Any]) -> dict[str, float]:
    """95% lower confidence bounds of the held-out figures (what the choice rests on):
    cosine mean - 1.96 standard errors; Wilson's bound for an agreement fraction."""
    n = max(int(fidelity.get("count") or 0), 1)
    bounds: dict[str, float] = {}
    if "cosine_mean" in fidelity and "cosine_std" in fidelity:
        bounds["cosine_mean_lb"] = fidelity["cosine_mean"] - 1.96 * fidelity["cosine_std"] / n**0.5
    for key in ("nn_agreement", "agreement"):
        if key in fidelity:
            bounds[f"{key}_lb"] = _wilson_lower(float(fidelity[key]), n)
    return bounds


def _wilson_lower(p: float, n: int, z: float = 1.96) -> float:
    centre = p + z * z / (2 * n)
    spread = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return (centre - spread) / (1 + z * z / n)


def measure_fidelity(
    data: EvalSet, outputs: np.ndarray, params: AutoInt8Params
) -> tuple[dict[str, Any], bool]:
    assert data.reference is not None
    if data.task == "embedding":
        e = ev.embedding_fidelity(data.reference, outputs)
        ok = e.cosine_mean >= params.cosine_mean_min and e.nn_agreement >= params.nn_agreement_min
        cosines = (ev.l2_normalize(data.reference) * ev.l2_normalize(outputs)).sum(1)
        return {**e.to_dict(), "cosine_std": float(cosines.std())}, ok
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
