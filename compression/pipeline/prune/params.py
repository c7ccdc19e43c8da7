"""Parameters of the structured-pruning recipes (no torch: the server validates with them)."""

from __future__ import annotations

from dataclasses import dataclass

from compression.pipeline.distill.params import DistillParams

__all__ = ["PruneFfnParams", "PruneHeadsParams", "recovery_params"]


@dataclass(frozen=True)
class _PruneBase:
    # Share of attention heads (prune-heads) or FFN neurons (prune-ffn) to remove.
    fraction: float = 0.25
    # Texts whose outputs rank heads/neurons by importance (from the training text).
    importance_texts: int = 128
    # Short recovery fine-tune towards the unpruned model, on the same texts.
    recovery_texts: int = 2_000
    recovery_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-4
    max_length: int = 64
    held_out: int = 128
    eval_every: int = 50
    patience: int = 3
    checkpoint_every: int = 50
    max_minutes: float | None = None
    threads: int = 2
    seed: int = 13

    def __post_init__(self) -> None:
        if not isinstance(self.fraction, (int, float)) or not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {self.fraction!r}")
        for name in ("importance_texts", "recovery_epochs", "batch_size", "held_out", "threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.recovery_texts, int) or self.recovery_texts < 0:
            raise ValueError("recovery_texts must be an integer >= 0 (0: no recovery)")


@dataclass(frozen=True)
class PruneHeadsParams(_PruneBase):
    opset: int = 17


@dataclass(frozen=True)
class PruneFfnParams(_PruneBase):
    pass


def recovery_params(p: _PruneBase) -> DistillParams:
    """The training loop's parameters for the recovery fine-tune."""
    return DistillParams(
        layers=1,  # unused by the loop
        max_train_texts=max(p.recovery_texts, 1),
        epochs=p.recovery_epochs,
        batch_size=p.batch_size,
        learning_rate=p.learning_rate,
        max_length=p.max_length,
        held_out=p.held_out,
        eval_every=p.eval_every,
        patience=p.patience,
        checkpoint_every=p.checkpoint_every,
        max_minutes=p.max_minutes,
        threads=p.threads,
        seed=p.seed,
    )
