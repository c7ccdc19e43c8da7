"""Parameters of the ``distill`` recipe and its errors (no torch here: the server imports
this module to validate a job before it is queued)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MIN_TRAIN_TEXTS", "DistillError", "DistillParams", "check_against_teacher"]

# Fewer texts than this cannot teach a student anything measurable.
MIN_TRAIN_TEXTS = 64


class DistillError(ValueError):
    """The teacher, data or parameters cannot make a student; the message says why."""


@dataclass(frozen=True)
class DistillParams:
    # Student depth: teacher layers are taken evenly spaced, always including the last.
    layers: int = 3
    # Which teacher layers to keep (increasing indices); default: evenly spaced, first and
    # last included.
    layer_map: list[int] | None = None
    # Train the word-embedding table too (slower; frozen by default).
    train_embeddings: bool = False
    # A narrower student (hidden size) initialised by projecting the teacher's weights on
    # the principal directions of its token embeddings; None keeps the teacher's width.
    hidden_size: int | None = None
    # "auto" reads the teacher's config (…ForSequenceClassification -> classifier).
    task: str = "auto"
    # Training texts taken from the dataset (or the built-in corpus), at most.
    max_train_texts: int = 20_000
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    # Texts are cut to this many tokens while training (short texts dominate real use).
    max_length: int = 64
    # Embedding students: weights of cosine and MSE on pooled embeddings and of MSE on
    # token states. Classifiers: KL on softened logits plus cross-entropy with labels.
    cosine_weight: float = 1.0
    pooled_mse_weight: float = 1.0
    token_weight: float = 0.5
    # Relation loss: KL between the teacher's and the student's softmax over in-batch
    # cosine similarities (temperature relation_temperature). It trains the ranking of
    # neighbours, which is what nearest-neighbour agreement measures.
    relation_weight: float = 0.0
    relation_temperature: float = 0.05
    # Layer loss: MSE between each student layer's output and the output of the teacher
    # layer it was initialised from (same width students only).
    layer_weight: float = 0.0
    temperature: float = 2.0
    label_weight: float = 0.5
    # Held-out fidelity is measured every eval_every steps on held_out texts; training
    # stops after `patience` measurements without an improvement of at least min_delta.
    eval_every: int = 100
    held_out: int = 256
    patience: int = 3
    min_delta: float = 0.0005
    checkpoint_every: int = 100
    # Stop training after this many minutes (the best student so far is kept); None: no
    # limit but the planned steps.
    max_minutes: float | None = None
    seed: int = 13
    threads: int = 2
    # Refuse teachers above this size (CPU training time grows with it).
    max_parameters: int = 150_000_000

    def __post_init__(self) -> None:
        positive = {
            "layers": self.layers,
            "max_train_texts": self.max_train_texts,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_every": self.eval_every,
            "held_out": self.held_out,
            "patience": self.patience,
            "checkpoint_every": self.checkpoint_every,
            "threads": self.threads,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size is not None and (
            not isinstance(self.hidden_size, int) or self.hidden_size < 8
        ):
            raise ValueError(f"hidden_size must be an integer >= 8, got {self.hidden_size!r}")
        if self.layer_map is not None and (
            not isinstance(self.layer_map, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in self.layer_map)
        ):
            raise ValueError("layer_map must be a list of teacher layer indices")
        if self.max_minutes is not None and not (
            isinstance(self.max_minutes, (int, float)) and self.max_minutes > 0
        ):
            raise ValueError("max_minutes must be a positive number")
        if self.task not in ("auto", "embedding", "classifier"):
            raise ValueError(f"task must be auto, embedding or classifier, not {self.task!r}")
        if not 0 < self.learning_rate < 1:
            raise ValueError("learning_rate must be between 0 and 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.max_length < 8:
            raise ValueError("max_length must be at least 8 tokens")
        weights = (
            self.cosine_weight,
            self.pooled_mse_weight,
            self.token_weight,
            self.relation_weight,
            self.layer_weight,
        )
        if min(weights) < 0 or max(weights) == 0:
            raise ValueError("loss weights must be >= 0 and not all zero")
        if not 0 < self.relation_temperature <= 10:
            raise ValueError("relation_temperature must be in (0, 10]")
        if self.temperature <= 0 or not 0 <= self.label_weight <= 1:
            raise ValueError("temperature must be > 0 and label_weight in [0, 1]")


ENCODER_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "mpnet"}
)


def check_against_teacher(params: DistillParams, inspection: dict[str, Any]) -> None:
    """Refuse, before any work, a teacher that is not an encoder or a student that is not
    smaller than it (``inspection`` is the teacher version's inspection record).

    Raises:
        DistillError: with the reason.
    """
    model_type = str(inspection.get("model_type") or "")
    archs = [str(a) for a in inspection.get("architectures") or []]
    if model_type not in ENCODER_TYPES:
        kind = "a decoder or encoder-decoder" if _is_generative(model_type, archs) else "not"
        raise DistillError(
            f"the teacher must be a BERT-style encoder ({', '.join(sorted(ENCODER_TYPES))}); "
            f"model_type {model_type or 'unknown'!r} ({', '.join(archs) or 'no architectures'}) "
            f"is {kind} one"
        )
    layers = inspection.get("num_layers")
    if isinstance(layers, int) and params.layers >= layers:
        raise DistillError(
            f"the student must be smaller than the teacher: {params.layers} layers requested, "
            f"the teacher has {layers}"
        )
    hidden = inspection.get("hidden_size")
    if params.hidden_size is not None and isinstance(hidden, int):
        if params.hidden_size > hidden:
            raise DistillError(
                f"hidden_size {params.hidden_size} is wider than the teacher's {hidden}"
            )
        heads = inspection.get("num_heads")
        if isinstance(heads, int) and params.hidden_size % heads:
            raise DistillError(
                f"hidden_size {params.hidden_size} must be a multiple of the teacher's "
                f"{heads} attention heads"
            )


def _is_generative(model_type: str, archs: list[str]) -> bool:
    return any(
        a.endswith(("LMHeadModel", "ForCausalLM", "ForConditionalGeneration")) for a in archs
    )
