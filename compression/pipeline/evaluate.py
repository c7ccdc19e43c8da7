"""Fidelity of a compressed model against its parent.

Metrics (all against the parent's outputs on the same inputs):

* embeddings: per-example cosine between pooled, L2-normalised vectors (mean
  and min), and *nearest-neighbour agreement*: for each example i, the index j != i
  whose embedding is most cosine-similar to i's is computed under the parent and
  under the candidate; agreement is the fraction of examples where the two
  indices are equal.  It checks that retrieval/ranking survives, which a high
  mean cosine alone does not guarantee.
* classifiers: prediction agreement, and accuracy of both (plus the drop, in
  points) when labels are known.
* other tensors: max and mean absolute error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.feeds import FittedSession
from compression.pipeline.textdata import Encoded, encode

__all__ = [
    "ClassifierFidelity",
    "EmbeddingFidelity",
    "TensorFidelity",
    "classifier_fidelity",
    "confidence_histogram",
    "embedding_fidelity",
    "l2_normalize",
    "mean_pool",
    "nearest_neighbours",
    "onnx_embeddings",
    "onnx_outputs",
    "open_session",
    "tensor_fidelity",
    "torch_embeddings",
]


class ShapeMismatchError(ValueError):
    """Reference and candidate outputs cannot be compared."""


@dataclass(frozen=True)
class EmbeddingFidelity:
    cosine_mean: float
    cosine_min: float
    nn_agreement: float
    count: int
    # Beside the strict figure: NN agreement over the texts whose reference nearest
    # neighbour leads the runner-up by more than NEAR_TIE cosine, and how many texts were
    # such near-ties. A near-tie can flip on any rounding; a clear neighbour should not.
    nn_agreement_clear: float | None = None
    near_ties: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClassifierFidelity:
    agreement: float
    count: int
    reference_accuracy: float | None = None
    candidate_accuracy: float | None = None
    # Accuracy drop in percentage points (positive = worse).
    accuracy_drop_points: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TensorFidelity:
    max_abs_error: float
    mean_abs_error: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_pair(reference: np.ndarray, candidate: np.ndarray) -> None:
    if reference.shape != candidate.shape:
        raise ShapeMismatchError(f"shape mismatch: {reference.shape} vs {candidate.shape}")
    if reference.size == 0:
        raise ShapeMismatchError("nothing to compare: empty outputs")


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average token vectors over the attention mask: [b, s, d] -> [b, d].

    A graph that pads internally (to 128) or takes a fixed length returns more or
    fewer positions than the mask has: only the positions both cover count, as on
    the device."""
    seq = min(hidden.shape[1], mask.shape[1])
    hidden, mask = hidden[:, :seq], mask[:, :seq]
    m = mask.astype(np.float32)[..., None]
    summed = (hidden.astype(np.float32) * m).sum(axis=1)
    return summed / np.clip(m.sum(axis=1), 1e-9, None)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.clip(norm, 1e-12, None)


# Cosine gap between a text's first and second neighbour under which the neighbour is
# a near-tie (int8 MiniLM moves similarities by about this much; bench/reports/zoo.md).
NEAR_TIE = 0.002


def _similarities(embeddings: np.ndarray) -> np.ndarray:
    e = l2_normalize(embeddings.astype(np.float64))
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.asarray(sim)


def nearest_neighbours(embeddings: np.ndarray) -> np.ndarray:
    """Index of each row's most cosine-similar *other* row."""
    return np.asarray(_similarities(embeddings).argmax(axis=1))


def clear_neighbours(sim: np.ndarray, gap: float = NEAR_TIE) -> np.ndarray:
    """Whether each row's nearest neighbour (in a `_similarities` matrix) leads the
    runner-up by more than `gap`."""
    if sim.shape[0] < 3:
        return np.ones(sim.shape[0], dtype=bool)
    top2 = -np.partition(-sim, 1, axis=1)[:, :2]
    return np.asarray(top2[:, 0] - top2[:, 1] > gap)


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray) -> EmbeddingFidelity:
    """Cosine mean/min and nearest-neighbour agreement of two [n, d] arrays.

    Raises:
        ShapeMismatchError: different shapes, or fewer than 2 rows (no neighbours).
    """
    _check_pair(reference, candidate)
    if reference.ndim != 2 or reference.shape[0] < 2:
        raise ShapeMismatchError(f"need [n>=2, d] embeddings, got {reference.shape}")
    cos = (
        l2_normalize(reference.astype(np.float64)) * l2_normalize(candidate.astype(np.float64))
    ).sum(1)
    reference_sim = _similarities(reference)  # once for both neighbour figures
    agree = reference_sim.argmax(axis=1) == nearest_neighbours(candidate)
    clear = clear_neighbours(reference_sim)
    return EmbeddingFidelity(
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        nn_agreement=float(agree.mean()),
        count=int(reference.shape[0]),
        nn_agreement_clear=float(agree[clear].mean()) if clear.any() else None,
        near_ties=int((~clear).sum()),
    )


def classifier_fidelity(
    reference_logits: np.ndarray,
    candidate_logits: np.ndarray,
    labels: Sequence[int] | np.ndarray | None = None,
) -> ClassifierFidelity:
    """Agreement of argmax predictions; accuracies and drop when labels are given.

    Raises:
        ShapeMismatchError: logits differ in shape, or labels in count.
    """
    _check_pair(reference_logits, candidate_logits)
    ref = reference_logits.argmax(axis=-1)
    cand = candidate_logits.argmax(axis=-1)
    agreement = float((ref == cand).mean())
    if labels is None:
        return ClassifierFidelity(agreement=agreement, count=int(ref.shape[0]))
    y = np.asarray(labels)
    if y.shape != ref.shape:
        raise ShapeMismatchError(f"{y.shape[0]} labels for {ref.shape[0]} predictions")
    ref_acc = float((ref == y).mean())
    cand_acc = float((cand == y).mean())
    return ClassifierFidelity(
        agreement=agreement,
        count=int(ref.shape[0]),
        reference_accuracy=ref_acc,
        candidate_accuracy=cand_acc,
        accuracy_drop_points=100.0 * (ref_acc - cand_acc),
    )


def confidence_histogram(logits: np.ndarray) -> dict[str, Any]:
    """Top-class softmax confidence histogram over the agent's fixed edges: the reference
    the server compares in-field confidences with (PSI). Same bucketing code as the agent,
    so a device seeing the evaluation data would report these very counts."""
    from tinyfleet_agent.protocol import CONFIDENCE_EDGES, Histogram

    flat = logits.reshape(logits.shape[0], -1).astype(np.float64)
    shifted = np.exp(flat - flat.max(axis=-1, keepdims=True))
    top = (shifted / shifted.sum(axis=-1, keepdims=True)).max(axis=-1)
    histogram = Histogram(CONFIDENCE_EDGES)
    for value in top:
        histogram.observe(float(value))
    return {"edges": list(CONFIDENCE_EDGES), "counts": histogram.counts, "count": histogram.total}


def tensor_fidelity(reference: np.ndarray, candidate: np.ndarray) -> TensorFidelity:
    _check_pair(reference, candidate)
    err = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return TensorFidelity(
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        count=int(reference.shape[0]),
    )


def open_session(model_path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with pinned thread counts (reproducible timings).

    A .tflite file gets an ai-edge-litert interpreter behind the same run/get_inputs API.
    """
    if str(model_path).endswith(".tflite"):
        from compression.pipeline.tflite_session import open_tflite

        return open_tflite(model_path, threads)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    # Fixed shapes and 4-D float masks are fed the way the device feeds them.
    return FittedSession(session)


def onnx_outputs(
    session: Any, encoded: Encoded, batch_size: int = 32, output: int = 0
) -> list[np.ndarray]:
    """Run output number ``output`` over ``encoded`` in batches; one array per batch."""
    outs = []
    for start in range(0, encoded.input_ids.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        part = Encoded(
            encoded.input_ids[sl], encoded.attention_mask[sl], encoded.token_type_ids[sl]
        )
        outs.append(session.run(None, part.all_feeds())[output])
    return outs


def onnx_embeddings(
    model: str | Path | Any,
    tokenizer_path: str | Path,
    texts: list[str],
    batch_size: int = 32,
    normalize: bool = True,
) -> np.ndarray:
    """Mean-pooled (and L2-normalised) sentence embeddings from an encoder ONNX model."""
    session = open_session(model) if isinstance(model, (str, Path)) else model
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = encode(tokenizer_path, texts[start : start + batch_size])
        hidden = onnx_outputs(session, enc, batch_size)[0]
        chunks.append(mean_pool(hidden, enc.attention_mask))
    emb = np.concatenate(chunks)
    return l2_normalize(emb) if normalize else emb


def torch_embeddings(
    model_dir: str | Path, texts: list[str], batch_size: int = 32, normalize: bool = True
) -> np.ndarray:
    """Reference embeddings from the fp32 PyTorch model (mean pooling + L2 norm)."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = encode(model_dir, texts[start : start + batch_size])
            hidden = model(
                input_ids=torch.from_numpy(enc.input_ids),
                attention_mask=torch.from_numpy(enc.attention_mask),
                token_type_ids=torch.from_numpy(enc.token_type_ids),
            ).last_hidden_state.numpy()
            chunks.append(mean_pool(hidden, enc.attention_mask))
    emb = np.concatenate(chunks)
    return l2_normalize(emb) if normalize else emb
