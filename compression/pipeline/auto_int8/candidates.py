"""The candidate schemes `onnx-int8-auto` tries, its parameters and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class FidelityTargetError(RuntimeError):
    """No candidate met the fidelity target; ``candidates`` holds what was measured."""

    def __init__(self, message: str, candidates: list[dict[str, Any]]):
        super().__init__(message)
        self.candidates = candidates


# MatMul kinds, found from the graph rather than from names:
#   "down"   K > N (FFN down-projection, input after GELU)
#   "up"     N > K (FFN up-projection, input after LayerNorm)
#   "shared" square, input shared by several MatMuls (Q/K/V)
#   "single" square, sole consumer (attention output projection)
KINDS = ("down", "up", "shared", "single")


@dataclass(frozen=True)
class Candidate:
    name: str
    smooth_alpha: dict[str, float] = field(default_factory=dict)  # kind -> alpha
    outliers: dict[str, int] = field(default_factory=dict)  # kind -> channels kept fp32
    weight_type: str = "int8"
    saturation_safe: bool = True
    keep_fp32_kinds: tuple[str, ...] = ()
    nbits8_top: int = 0  # most sensitive MatMuls as MatMulNBits 8-bit
    # Nodes left unquantized by name (bench/int8_ceiling.py: how much float would buy).
    keep_fp32_nodes: tuple[str, ...] = ()
    # Embedding tables with one int8 scale per row instead of one per table.
    embedding_rows: bool = False


_ALL = {k: 0.8 for k in KINDS}
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("dynamic-per-channel", saturation_safe=False),
    Candidate("dynamic-per-channel-satsafe"),
    Candidate("keep-down-fp32", keep_fp32_kinds=("down",), saturation_safe=False),
    Candidate("nbits8-sensitive", nbits8_top=6, saturation_safe=False),
    Candidate("smoothquant-0.8", smooth_alpha=_ALL),
    Candidate("smoothquant-0.8-uint8", smooth_alpha=_ALL, weight_type="uint8"),
    Candidate("smoothquant-0.8-outliers-down8", smooth_alpha=_ALL, outliers={"down": 8}),
    Candidate(
        "smoothquant-0.7-outliers-down16",
        smooth_alpha={k: 0.7 for k in KINDS},
        outliers={"down": 16},
    ),
    Candidate(
        "smoothquant-0.7-outliers-down16-rows",
        smooth_alpha={k: 0.7 for k in KINDS},
        outliers={"down": 16},
        embedding_rows=True,
    ),
    Candidate(
        "smoothquant-0.65-outliers-down8-up4",
        smooth_alpha={k: 0.65 for k in KINDS},
        outliers={"down": 8, "up": 4, "shared": 4},
    ),
)


@dataclass(frozen=True)
class AutoInt8Params:
    cosine_mean_min: float = 0.998
    nn_agreement_min: float = 0.97
    accuracy_drop_max_points: float = 1.0
    agreement_min: float = 0.99  # classifiers evaluated without labels
    tensor_rel_error_max: float = 0.01  # other models: mean |err| / mean |ref|
    size_ratio_max: float | None = None
    candidates: tuple[str, ...] = ()  # names from DEFAULT_CANDIDATES; empty = all
    calibration_samples: int = 128
    eval_samples: int = 360
    # Real texts the choice is checked on, never chosen on (0: no held-out set).
    heldout_samples: int = 300
    max_length: int = 128
    latency_sequence_length: int = 64
    latency_rounds: int = 15
    threads: int = 1
    require_target: bool = True
    output_name: str = "model.int8.onnx"
