"""The server's view of the compression recipes: which formats each applies to, what it
produces, and validation of its parameters before a job is queued."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compression.models import Format
from compression.pipeline.distill.params import DistillParams, check_against_teacher
from compression.pipeline.qat.params import QatParams
from compression.pipeline.runner import RECIPES, resolve


def _check_distill(params: dict[str, Any], inspection: dict[str, Any]) -> None:
    check_against_teacher(DistillParams(**params), inspection)


def _check_prunable(params: dict[str, Any], inspection: dict[str, Any]) -> None:
    # Pruning needs the same BERT-style encoder layout as distillation (any depth).
    check_against_teacher(DistillParams(layers=1), {**inspection, "num_layers": None})


def _check_qat(params: dict[str, Any], inspection: dict[str, Any]) -> None:
    from compression.pipeline.qat.recipe import check_candidate

    _check_prunable(params, inspection)
    if any("SequenceClassification" in str(a) for a in inspection.get("architectures") or []):
        raise ValueError(
            "quantization-aware fine-tuning is built for sentence-embedding encoders; "
            "for a classifier use onnx-int8-auto"
        )
    check_candidate(str(params.get("candidate", QatParams.candidate)))


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    title: str
    input_formats: frozenset[str]
    output_format: str
    needs_calibration: bool = False
    recommended: bool = False
    description: str = ""
    # Parameters the browser form starts from (JSON); "{}" means the recipe's defaults.
    form_params: str = "{}"
    # Subprocess function measuring fidelity + golden set (compression.pipeline.runner).
    assessor: str = "assess"
    # Trains on text: calibration_dataset is its training text (optional: built-in corpus),
    # eval_dataset its held-out set, and it keeps a checkpoint between deliveries.
    trains: bool = False
    # Checks the parameters against the parent's inspection before queueing (raises
    # ValueError with the reason).
    precheck: Callable[[dict[str, Any], dict[str, Any]], None] | None = None


CATALOGUE: dict[str, RecipeInfo] = {
    info.name: info
    for info in (
        RecipeInfo(
            "onnx-int8-auto",
            "INT8, accuracy-aware (recommended)",
            frozenset({Format.ONNX}),
            Format.ONNX,
            recommended=True,
            description="Tries int8 schemes and keeps the fastest that meets the fidelity target.",
        ),
        RecipeInfo(
            "onnx-int8-dynamic",
            "INT8 dynamic (per-channel)",
            frozenset({Format.ONNX}),
            Format.ONNX,
            description="onnxruntime quantize_dynamic.",
        ),
        RecipeInfo(
            "onnx-int8-static",
            "INT8 static (QDQ, calibrated)",
            frozenset({Format.ONNX}),
            Format.ONNX,
            needs_calibration=True,
            description="Needs a calibration dataset; best on NPUs/accelerators.",
        ),
        RecipeInfo(
            "onnx-fp16",
            "FP16",
            frozenset({Format.ONNX}),
            Format.ONNX,
            description="Half-precision weights; float32 inputs and outputs kept.",
        ),
        RecipeInfo(
            "as-is",
            "Publish as is (golden set only)",
            frozenset({Format.ONNX, Format.TFLITE}),
            Format.ONNX,
            description="No compression: measures the golden set and benchmark that "
            "publishing needs on this very version (already int8, tiny or MCU models).",
        ),
        RecipeInfo(
            "export-onnx",
            "Export to ONNX",
            frozenset({Format.HF_DIR}),
            Format.ONNX,
            description="Hugging Face directory to ONNX (opset 17).",
        ),
        RecipeInfo(
            "tflite",
            "Export to TFLite (LiteRT)",
            frozenset({Format.HF_DIR}),
            Format.TFLITE,
            description=(
                "Hugging Face directory to a fixed-shape .tflite with litert-torch; "
                "fp32, dynamic int8 or weight-only int8."
            ),
            form_params='{"variant": "dynamic-int8", "seq_len": 128}',
        ),
        RecipeInfo(
            "tflm",
            "TFLite Micro (full int8, C array)",
            frozenset({Format.HF_DIR}),
            Format.TFLITE,
            description="Tiny models for microcontrollers: int8 .tflite, model_data.cc/.h "
            "and the measured tensor arena.",
            assessor="assess-tflm",
        ),
        RecipeInfo(
            "sensor-transformer",
            "Tiny sensor Transformer (train, int8, TFLite Micro)",
            frozenset({Format.SENSOR_SPEC}),
            Format.TFLITE,
            needs_calibration=True,
            description="Trains a small time-series Transformer from scratch on sensor "
            "windows; full int8 .tflite, model_data.cc/.h with the measured arena, ONNX.",
            form_params='{"epochs": 150, "batch_size": 8}',
        ),
        RecipeInfo(
            "distill",
            "Distill into a smaller student",
            frozenset({Format.HF_DIR}),
            Format.HF_DIR,
            description="Trains a student with fewer layers (optionally narrower) to match "
            "this encoder on CPU. Training text: the calibration dataset, else the built-in "
            "corpus; held-out: the evaluation dataset, else a reserved split.",
            form_params='{"layers": 3, "max_train_texts": 20000}',
            assessor="assess-student",
            trains=True,
            precheck=_check_distill,
        ),
        RecipeInfo(
            "onnx-int8-qat",
            "INT8 with quantization-aware fine-tuning",
            frozenset({Format.HF_DIR}),
            Format.ONNX,
            description="Fine-tunes a copy of this sentence encoder under simulated int8 "
            "so the int8 model stays closer to the original, then quantizes it and measures "
            "it against the original. Minutes of CPU training; training text: the "
            "calibration dataset, else the built-in corpus.",
            form_params='{"steps": 450}',
            trains=True,
            precheck=_check_qat,
        ),
        RecipeInfo(
            "prune-heads",
            "Prune attention heads (to ONNX)",
            frozenset({Format.HF_DIR}),
            Format.ONNX,
            description="Removes the least important heads (measured by ablation), "
            "fine-tunes briefly towards the unpruned model, exports the smaller model to ONNX.",
            form_params='{"fraction": 0.25}',
            trains=True,
            precheck=_check_prunable,
        ),
        RecipeInfo(
            "prune-ffn",
            "Prune FFN neurons",
            frozenset({Format.HF_DIR}),
            Format.HF_DIR,
            description="Removes the least active feed-forward neurons (same count per "
            "layer) and fine-tunes briefly; stays a Hugging Face folder.",
            form_params='{"fraction": 0.25}',
            assessor="assess-student",
            trains=True,
            precheck=_check_prunable,
        ),
    )
    if info.name in RECIPES
}


class RecipeError(ValueError):
    """A job request that cannot run; the message says why."""


def check_recipe(recipe: str, version_format: str) -> RecipeInfo:
    """Raises RecipeError when the recipe is unknown or does not apply to the format."""
    info = CATALOGUE.get(recipe)
    if info is None:
        raise RecipeError(f"unknown recipe {recipe!r}; choose one of: {', '.join(CATALOGUE)}")
    if version_format not in info.input_formats:
        accepted = ", ".join(sorted(info.input_formats))
        raise RecipeError(f"recipe {recipe!r} applies to {accepted} models, not {version_format!r}")
    return info


def check_params(recipe: str, params: dict[str, Any]) -> dict[str, Any]:
    """Build the recipe's parameter dataclass to validate names, types and values.

    Returns the parameters with defaults filled in, as recorded in the lineage.
    Raises RecipeError with the parameter's problem.
    """
    if not isinstance(params, dict):
        raise RecipeError("params must be a JSON object")
    _, params_cls = resolve(recipe)
    if params_cls is None:
        return dict(params)
    known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RecipeError(
            f"unknown parameter(s) for {recipe}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        built = params_cls(**params)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid parameters for {recipe}: {exc}") from exc
    return _jsonable(dataclasses.asdict(built))


def check_applicable(info: RecipeInfo, params: dict[str, Any], inspection: dict[str, Any]) -> None:
    """Recipe-specific checks against the parent (a teacher that is not an encoder).

    Raises:
        RecipeError: the recipe cannot work on this model with these parameters.
    """
    if info.precheck is None:
        return
    try:
        info.precheck(params, inspection)
    except ValueError as exc:
        raise RecipeError(str(exc)) from exc


def check_model_size(params: dict[str, Any], inspection: dict[str, Any]) -> None:
    """Refuse before queueing when the recipe bounds the parameter count
    (``max_parameters``) and the inspected model is above it.

    Raises:
        RecipeError: the model has more parameters than the bound.
    """
    bound, count = params.get("max_parameters"), inspection.get("parameters")
    if isinstance(bound, int) and isinstance(count, int) and count > bound:
        raise RecipeError(
            f"model has {count:,} parameters; this recipe accepts at most {bound:,} "
            "(set max_parameters to raise the bound)"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return value
