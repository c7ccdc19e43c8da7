"""Which recipe to suggest for an inspected model, or why none applies.

Decided from the inspection alone (format, task, tokenizer, operators, weights), so the
version page can say it before anything runs; the recipe still measures and may refuse.
"""

from __future__ import annotations

from typing import Any

__all__ = ["recommend_recipe", "stateful_reason"]

TEXT_TASKS = ("text-embedding", "text-classification", "token-classification")
# Below this, int8 saves little (a few MB) and the risk to accuracy stays the same.
_MIN_PARAMETERS = 1_000_000
_WEIGHT_OPS = ("MatMul", "Gemm")


def recommend_recipe(inspection: dict[str, Any], task: str) -> dict[str, Any]:
    """{"recipe": name or None, "reason": one sentence}."""
    fmt = inspection.get("format")
    ops: dict[str, int] = inspection.get("ops") or {}
    params = int(inspection.get("parameters") or 0)
    if fmt == "hf-dir":
        return _pick("export-onnx", "a Hugging Face folder: export it to ONNX, then int8 it")
    if stateful_reason(inspection):
        return _none(stateful_reason(inspection))
    if fmt == "tflite":
        int8 = "fully int8" if _tflite_int8(inspection) else "a TFLite flatbuffer"
        return _none(f"the model is {int8}; no server recipe re-quantizes TFLite: publish it as is")
    if inspection.get("quantized"):
        return _none(
            f"already quantized ({inspection['quantized']}); quantize its fp32 original, "
            "or publish it as it is (recipe as-is)"
        )
    if not inspection.get("primary_output"):
        return _none("no output can be measured, so no compression could be checked")
    if params < _MIN_PARAMETERS:
        return _none(
            f"{params:,} parameters: int8 would save under {params * 3 / 1e6:.1f} MB; "
            "publish it as it is (recipe as-is)"
        )
    weight_ops = sum(ops.get(op, 0) for op in _WEIGHT_OPS)
    if task in TEXT_TASKS and (inspection.get("tokenizer") or {}).get("present") and weight_ops:
        return _pick("onnx-int8-auto", "a Transformer with a tokenizer: int8, accuracy-aware")
    if weight_ops:
        return _pick(
            "onnx-int8-dynamic",
            "int8 weights for its MatMul/Gemm layers (no tokenizer or text data to tune on)",
        )
    return _pick("onnx-fp16", "no MatMul/Gemm layers for int8: half-precision weights")


_VARIABLE_OPS = ("VAR_HANDLE", "ASSIGN_VARIABLE", "READ_VARIABLE")


def stateful_reason(inspection: dict[str, Any]) -> str:
    """Why a model that hides state between calls cannot be published ("" if it can)."""
    ops = inspection.get("ops") or {}
    if not any(ops.get(op) for op in _VARIABLE_OPS):
        return ""
    return (
        "a streaming model that keeps its state in resource variables: every call changes "
        "the next answer, so no golden self-test can replay it on a device and it cannot "
        "be published; export it with the state as explicit inputs and outputs "
        "(as silero-vad does)"
    )


def _pick(recipe: str, reason: str) -> dict[str, Any]:
    return {"recipe": recipe, "reason": reason}


def _none(reason: str) -> dict[str, Any]:
    return {"recipe": None, "reason": reason}


def _tflite_int8(inspection: dict[str, Any]) -> bool:
    tensors = [*(inspection.get("inputs") or []), *(inspection.get("outputs") or [])]
    return bool(tensors) and all(t.get("dtype") in ("int8", "uint8") for t in tensors)
