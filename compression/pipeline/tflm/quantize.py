"""Full-integer quantization for TFLite Micro with ai-edge-quantizer.

Static int8 weights *and* activations (``static_wi8_ai8``), calibrated on
representative text: the job's calibration set or the built-in sentences. The
quantizer writes weights past the flatbuffer (buffer offsets) once they exceed
256 KB; TFLite Micro reads only the flatbuffer, so the result is re-serialised with
every buffer inlined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression.pipeline.textdata import default_sentences, encode, load_jsonl
from compression.pipeline.tflm.params import TflmError

__all__ = ["INPUT_NAMES", "calibration_texts", "inline_buffers", "quantize_full_int8", "text_feeds"]

SIGNATURE = "serving_default"
INPUT_NAMES = ("input_ids", "attention_mask")
# The flatbuffer format cannot address more than 2 GB; inlining must stay below it.
FLATBUFFER_LIMIT = 2**31 - 1


def calibration_texts(calibration_path: str | None, samples: int) -> tuple[list[str], str]:
    """Texts for calibration and where they came from.

    Raises:
        TflmError: the calibration file has no usable text.
    """
    if calibration_path:
        texts = [example.text for example in load_jsonl(calibration_path)]
        if not texts:
            raise TflmError("the calibration dataset has no text")
        return texts[:samples], "calibration dataset"
    return default_sentences()[:samples], "built-in sentences"


def text_feeds(tokenizer: Path, texts: list[str], length: int) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per text, padded/truncated to the model's fixed length."""
    encoded = encode(tokenizer, texts, max_length=length, pad_to=length)
    return [
        {
            "input_ids": encoded.input_ids[i : i + 1].astype(np.int32),
            "attention_mask": encoded.attention_mask[i : i + 1].astype(np.float32),
        }
        for i in range(len(texts))
    ]


def quantize_full_int8(float_model: Path, feeds: list[dict[str, np.ndarray]]) -> bytes:
    """The int8 model's bytes, every buffer inside the flatbuffer.

    Raises:
        TflmError: the quantizer rejected the model or the calibration data.
    """
    from ai_edge_quantizer import qtyping, quantizer, recipe

    quant = quantizer.Quantizer(str(float_model))
    quant.load_quantization_recipe(recipe.static_wi8_ai8())
    # Static int8 leaves EMBEDDING_LOOKUP's table in float; an int8 per-tensor table
    # with float output is TFLM's hybrid lookup, followed by a QUANTIZE.
    quant.add_dynamic_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.EMBEDDING_LOOKUP,
        num_bits=8,
        granularity=qtyping.QuantGranularity.TENSORWISE,
    )
    try:
        ranges = quant.calibrate({SIGNATURE: feeds}, num_threads=1)
        result = quant.quantize(ranges)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise TflmError(f"ai-edge-quantizer failed: {exc}") from exc
    assert result.quantized_model is not None
    return inline_buffers(bytes(result.quantized_model))


def inline_buffers(model: bytes) -> bytes:
    """Re-serialise a .tflite so no buffer lives past the flatbuffer (offset/size)."""
    from ai_edge_litert.tools import flatbuffer_utils

    # read_model_from_bytearray resolves offset-addressed buffers into .data.
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    inlined = bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
    if len(inlined) > FLATBUFFER_LIMIT:
        raise TflmError("the model is too large to inline in one flatbuffer")
    return inlined
