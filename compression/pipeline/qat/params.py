"""Parameters of the ``onnx-int8-qat`` recipe and its error (no torch here: the server
imports this module to validate a job before it is queued)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QatError", "QatParams"]


class QatError(ValueError):
    """The model, data or parameters cannot be fine-tuned for int8; the message says why."""


@dataclass(frozen=True)
class QatParams:
    # The onnx-int8-auto candidate the fine-tuned model is quantized with; training
    # simulates exactly its arithmetic.
    candidate: str = "smoothquant-0.7-outliers-down16-rows"
    steps: int = 450
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_steps: int = 50
    # Loss: cosine of pooled embeddings (weighted), MSE of the token states and of the
    # in-batch similarities.
    cosine_weight: float = 100.0
    token_weight: float = 1.0
    # MSE between the in-batch cosine-similarity matrices of the two models.
    relation_weight: float = 10_000.0
    max_train_texts: int = 20_000
    # Texts are cut to this many tokens while training.
    max_length: int = 128
    seed: int = 0
    threads: int = 2
    # Passed to the int8 measurement (see AutoInt8Params).
    require_target: bool = True
    calibration_samples: int = 128
    heldout_samples: int = 300
    latency_rounds: int = 15

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise QatError("steps must be at least 1 and batch_size at least 2")
        if not 0 < self.learning_rate < 1e-2:
            raise QatError("learning_rate must be in (0, 0.01): fine-tuning, not training")
        if self.max_length < 8:
            raise QatError("max_length must be at least 8 tokens")
