"""Recipe ``onnx-int8-auto``: accuracy-aware int8 for Transformer encoders.

Plain dynamic int8 quantizes each MatMul's activation with one scale per call.
BERT-style encoders have a few huge activation channels (LayerNorm outputs,
GELU outputs before the FFN down-projection), so that scale is coarse for all
other channels.  On AVX2 CPUs without VNNI, onnxruntime's u8s8 kernel also
saturates (VPMADDUBSW adds two u8*s8 products into int16).  This recipe builds
several candidates, measures each against the parent and returns the fastest
(then smallest) one that meets the fidelity target:

* ``dynamic-per-channel``: quantize_dynamic, per-channel int8 weights.
* ``keep-down-fp32``: the same with the FFN down-projections left in fp32.
* ``nbits8-sensitive``: the most sensitive MatMuls as MatMulNBits 8-bit.
* ``smoothquant``: per-channel activation scales migrated into the weights
  (SmoothQuant, s = max|X|^a / max|W|^(1-a); X/s by a Mul, W*s folded).
* ``smoothquant-outliers``: additionally, the k largest activation channels
  of the chosen MatMuls bypass int8: they are zeroed in the int8 path and
  computed by a tiny fp32 MatMul on just those channels (LLM.int8()-style).
* ``...-rows``: additionally, embedding tables get one int8 scale per row instead
  of one u8 range per table.

Candidates with signed int8 weights are re-quantized saturation-safe: each
output column's scale is raised until no same-sign pair of adjacent weights
exceeds 128 in magnitude, so u8 activations (<= 255) can never overflow int16.
"""

from compression.pipeline.auto_int8.candidates import (
    DEFAULT_CANDIDATES,
    KINDS,
    AutoInt8Params,
    Candidate,
    FidelityTargetError,
)
from compression.pipeline.auto_int8.graph import (
    activation_absmax,
    saturation_safe_requantize,
    smooth_and_split,
)
from compression.pipeline.auto_int8.search import quantize_int8_auto

__all__ = [
    "DEFAULT_CANDIDATES",
    "KINDS",
    "AutoInt8Params",
    "Candidate",
    "FidelityTargetError",
    "activation_absmax",
    "quantize_int8_auto",
    "saturation_safe_requantize",
    "smooth_and_split",
]
