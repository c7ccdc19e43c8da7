"""Parameters and errors of the ``tflm`` recipe (TFLite Micro, full int8)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GELU_FORMS", "TflmError", "TflmParams", "TooLargeError", "UnsupportedOpsError"]

GELU_FORMS = ("sigmoid", "tanh")
# A Cortex-M class part has a few hundred KB to a few MB of flash; 4M int8 weights
# (~4 MB) is already the top of that range.
DEFAULT_MAX_PARAMETERS = 4_000_000
MAX_SEQUENCE_LENGTH = 512


class TflmError(ValueError):
    """The model cannot become a TFLite Micro model; the message says why."""


class TooLargeError(TflmError):
    """The model has more parameters than the microcontroller bound allows."""


class UnsupportedOpsError(TflmError):
    """The converted graph uses operators TFLite Micro has no kernel for."""

    def __init__(self, ops: list[str]):
        super().__init__(
            "TFLite Micro has no kernel for these operators: " + ", ".join(sorted(ops))
        )
        self.ops = sorted(ops)


@dataclass(frozen=True)
class TflmParams:
    # Micro models take one fixed shape: inputs are padded/truncated to this.
    sequence_length: int = 32
    # "auto": classifier if config.architectures says *ForSequenceClassification.
    task: str = "auto"
    max_parameters: int = DEFAULT_MAX_PARAMETERS
    # Representative inputs for the int8 activation ranges.
    calibration_samples: int = 64
    # TFLM has no GELU kernel: "sigmoid" is x*sigmoid(1.702x) (LOGISTIC + MUL),
    # "tanh" is the tanh approximation (TANH + MUL + ADD).
    gelu: str = "sigmoid"
    array_name: str = "g_model_data"
    latency_runs: int = 20

    def __post_init__(self) -> None:
        if not 2 <= self.sequence_length <= MAX_SEQUENCE_LENGTH:
            raise ValueError(f"sequence_length must be 2..{MAX_SEQUENCE_LENGTH}")
        if self.task not in ("auto", "embedding", "classifier"):
            raise ValueError("task must be auto, embedding or classifier")
        if self.max_parameters < 1:
            raise ValueError("max_parameters must be positive")
        if not 1 <= self.calibration_samples <= 10_000:
            raise ValueError("calibration_samples must be 1..10000")
        if self.gelu not in GELU_FORMS:
            raise ValueError(f"gelu must be one of {', '.join(GELU_FORMS)}")
        if not self.array_name.isidentifier() or not self.array_name.isascii():
            raise ValueError("array_name must be a C identifier")
        if not 1 <= self.latency_runs <= 1000:
            raise ValueError("latency_runs must be 1..1000")
