"""Recipe ``as-is``: keep the model unchanged and record what publishing needs.

A model that is already int8, tiny, or built for a microcontroller should not be
compressed again, but devices still need a golden set to self-test it before switching.
This recipe copies the model; the job then measures the golden set and the benchmark on
the version itself instead of creating a new one.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from compression.pipeline.errors import InvalidModelError
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress

__all__ = ["AsIsParams", "keep_as_is"]


@dataclass(frozen=True)
class AsIsParams:
    pass


def keep_as_is(
    model_path: str,
    output_dir: str,
    params: AsIsParams = AsIsParams(),
    progress: ProgressFn = no_progress,
    tokenizer_path: str | None = None,
) -> RecipeResult:
    """Copy the model file (the .onnx or .tflite of a folder) into `output_dir`.

    Raises:
        ValueError: no single model file to keep.
    """
    source = Path(model_path)
    if source.is_dir():
        found = sorted(source.glob("*.onnx")) or sorted(source.glob("*.tflite"))
        if len(found) != 1:
            raise ValueError(f"expected one .onnx or .tflite file, found {len(found)}")
        source = found[0]
    if source.suffix == ".tflite":
        from compression.pipeline.inspect import inspect_model
        from compression.pipeline.recommend import stateful_reason

        reason = stateful_reason(inspect_model(source, "tflite"))
        if reason:
            raise InvalidModelError(f"This model is {reason}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / source.name
    shutil.copyfile(source, target)
    progress(1.0, "done", "kept unchanged")
    return RecipeResult(
        output_path=str(target),
        recipe="as-is",
        params=asdict(params),
        log=[f"kept {source.name} unchanged ({target.stat().st_size} bytes)"],
    )
