"""Parameters and errors of the ``sensor-transformer`` recipe."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTIVATIONS", "ATTENTIONS", "NORMS", "SensorDataError", "SensorParams"]

ACTIVATIONS = ("relu", "gelu-sigmoid")
NORMS = ("batch", "layer")
ATTENTIONS = ("local", "global")
TASKS = ("classification", "anomaly")


class SensorDataError(ValueError):
    """The sensor data cannot be used; the message says why (file, row, column)."""


@dataclass(frozen=True)
class SensorParams:
    # "classification" needs labels; "anomaly" learns to forecast normal data.
    task: str = "classification"
    # Every window is resampled/padded to this many time steps (0: the data's longest).
    window: int = 0
    # Streams (CSV without a window column) are cut into windows every ``hop`` steps.
    hop: int = 0
    d_model: int = 32
    layers: int = 2
    heads: int = 2
    ff: int = 64
    # The conv front-end subsamples time by this factor (1, 2, 4 or 8).
    subsample: int = 4
    # Local attention: each token sees this many tokens either side (0: global).
    attention_radius: int = 4
    activation: str = "relu"
    norm: str = "batch"
    epochs: int = 150
    batch_size: int = 8
    learning_rate: float = 0.003
    seed: int = 0
    # CPU threads for training (the machine is shared).
    threads: int = 1
    # Inverse-frequency class weights in the loss (imbalanced data).
    balance_classes: bool = True
    # Share of the training windows kept aside to pick the epoch and (anomaly) the threshold.
    validation_split: float = 0.0
    # Anomaly: the model forecasts this many steps from the rest of the window.
    horizon: int = 8
    # Anomaly: threshold = this quantile of the errors on normal calibration data, times margin.
    threshold_quantile: float = 1.0
    threshold_margin: float = 1.0
    calibration_samples: int = 128
    # Anomaly: return every block's score in the metrics (benchmarks; large).
    keep_scores: bool = False
    array_name: str = "g_model_data"
    latency_runs: int = 50

    def __post_init__(self) -> None:
        checks = (
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}"),
            (self.window == 0 or 8 <= self.window <= 4096, "window must be 0 or 8..4096"),
            (0 <= self.hop <= 4096, "hop must be 0..4096"),
            (1 <= self.horizon <= 256, "horizon must be 1..256"),
            (
                4 <= self.d_model <= 256 and self.d_model % self.heads == 0
                if self.heads
                else False,
                "d_model must be 4..256 and divisible by heads",
            ),
            (1 <= self.layers <= 4, "layers must be 1..4"),
            (1 <= self.heads <= 8, "heads must be 1..8"),
            (4 <= self.ff <= 1024, "ff must be 4..1024"),
            (self.subsample in (1, 2, 4, 8), "subsample must be 1, 2, 4 or 8"),
            (0 <= self.attention_radius <= 512, "attention_radius must be 0..512"),
            (self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}"),
            (self.norm in NORMS, f"norm must be one of {', '.join(NORMS)}"),
            (1 <= self.epochs <= 5000, "epochs must be 1..5000"),
            (1 <= self.batch_size <= 1024, "batch_size must be 1..1024"),
            (0 < self.learning_rate < 1, "learning_rate must be in (0, 1)"),
            (1 <= self.threads <= 8, "threads must be 1..8"),
            (0 <= self.validation_split < 0.9, "validation_split must be in [0, 0.9)"),
            (0.5 <= self.threshold_quantile <= 1.0, "threshold_quantile must be 0.5..1"),
            (1.0 <= self.threshold_margin <= 10.0, "threshold_margin must be 1..10"),
            (1 <= self.calibration_samples <= 10_000, "calibration_samples must be 1..10000"),
            (
                self.array_name.isidentifier() and self.array_name.isascii(),
                "array_name must be a C identifier",
            ),
            (1 <= self.latency_runs <= 1000, "latency_runs must be 1..1000"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
