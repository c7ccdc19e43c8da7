"""Recipe ``tflite``: a Hugging Face model folder -> .tflite with litert-torch (no
TensorFlow), optionally quantized with ai-edge-quantizer.

What the measurements on these machines taught (DESIGN.md):

* The graph has a fixed input shape, ``input_ids`` and ``attention_mask`` of
  [1, seq_len] int32: LiteRT runs static shapes fastest, and microcontroller-class
  runtimes take nothing else. Devices pad to ``seq_len`` and send the 0/1 mask.
* The 0/1 mask becomes an additive 4-D mask *inside our wrapper* and is handed to the
  encoder ready-made, with -30 rather than -inf: transformers' own mask builder traces
  into ops LiteRT lowers badly, and -inf turns a fully masked row into NaN.
* Embedding models pool and L2-normalise inside the graph, so the padded positions never
  leave it and a device gets its sentence vector from one output.
* Variants: ``fp32``; ``dynamic-int8`` (ai-edge-quantizer ``dynamic_wi8_afp32``: int8
  weights, activations quantized on the fly; cosine 0.998 and 0.35x the fp32 latency on
  MiniLM); ``weight-only-int8`` (int8 weights dequantized to float compute: a 4x smaller
  file at fp32 accuracy).

Every op of the result is recorded with its version(s) and the model's minimum runtime
version (read back from the flatbuffer by ``inspect``), so an operator can tell which
device runtimes can load it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compression.pipeline.export_onnx import (
    ExportError,
    _copy_tokenizer,
    _detect_task,
    _load_config,
    read_pipeline_spec,
)
from compression.pipeline.runner import ProgressFn, RecipeResult, no_progress

__all__ = ["VARIANTS", "TfliteParams", "export_tflite", "quantize_variant", "record_ops"]

VARIANTS = ("fp32", "dynamic-int8", "weight-only-int8")
MIN_SEQ, MAX_SEQ = 8, 512
# Additive mask value for padded positions: large enough to zero them after softmax,
# finite so a row of padding cannot produce NaN.
MASK_NEGATIVE = -30.0
INPUT_NAMES = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class TfliteParams:
    variant: str = "dynamic-int8"
    seq_len: int = 128
    # "auto": classifier if config.architectures says *ForSequenceClassification,
    # otherwise an embedding encoder (pooled and normalised in the graph).
    task: str = "auto"
    output_name: str = "model.tflite"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        if not isinstance(self.seq_len, int) or not MIN_SEQ <= self.seq_len <= MAX_SEQ:
            raise ValueError(
                f"seq_len must be an integer from {MIN_SEQ} to {MAX_SEQ}, not {self.seq_len!r}"
            )
        if self.task not in ("auto", "embedding", "classifier"):
            raise ValueError(f"task must be auto, embedding or classifier, not {self.task!r}")
        if not self.output_name.endswith(".tflite") or "/" in self.output_name:
            raise ValueError("output_name must be a plain file name ending in .tflite")


def export_tflite(
    model_dir: str,
    output_dir: str,
    params: TfliteParams = TfliteParams(),
    progress: ProgressFn = no_progress,
    calibration_path: str | None = None,
    tokenizer_path: str | None = None,
) -> RecipeResult:
    """Convert ``model_dir`` (config.json + safetensors) to ``output_dir/model.tflite``.

    ``calibration_path``/``tokenizer_path`` are accepted (and unused: dynamic and
    weight-only quantization need no calibration) so every recipe takes the same
    keyword arguments.

    Raises:
        ExportError: missing config/weights, unsupported task, or a ``seq_len`` longer
            than the model's position table.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _require_converters()
    src, out_dir = Path(model_dir), Path(output_dir)
    config = _load_config(src)
    task = _detect_task(config, params.task)
    max_positions = int(config.get("max_position_embeddings") or MAX_SEQ)
    if params.seq_len > max_positions:
        raise ExportError(f"seq_len {params.seq_len} exceeds the model's {max_positions} positions")
    spec = read_pipeline_spec(src, task)
    log = [f"task={task} model_type={config.get('model_type')} variant={params.variant}"]
    progress(0.05, "load", "loading the PyTorch model")
    graph = _graph(src, task, spec)
    sample = _sample_inputs(params.seq_len, int(config.get("vocab_size") or 100))
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / params.output_name
    float_path = out_dir.parent / f".{params.output_name}.fp32"
    try:
        progress(0.15, "convert", f"litert-torch, fixed shape [1, {params.seq_len}] int32")
        _convert(graph, sample, float_path)
        log.append(f"fp32 graph: {float_path.stat().st_size} bytes")
        progress(0.7, "quantize", params.variant)
        quantize_variant(float_path, out_path, params.variant)
    finally:
        float_path.unlink(missing_ok=True)
    progress(0.85, "check", "running the result on ai-edge-litert")
    check = _check_against_torch(graph, out_path, sample, task)
    log.append(f"check on ai-edge-litert vs PyTorch (one sample): {check}")
    ops = record_ops(out_path)
    log.append(f"ops: {', '.join(f'{k} v{v}' for k, v in ops['op_versions'].items())}")
    log.append(f"minimum runtime version: {ops['min_runtime_version'] or 'not recorded'}")
    _copy_tokenizer(src, out_dir)
    size = out_path.stat().st_size
    log.append(f"wrote {out_path.name}: {size} bytes")
    progress(1.0, "done", "converted")
    # The agent returns a rank-2 output as is: nothing left to pool on the device.
    in_graph = {"pooling": "none", "pooled_in_graph": True} if task == "embedding" else {}
    return RecipeResult(
        output_path=str(out_path),
        recipe="tflite",
        params=asdict(params),
        log=log,
        metrics={"size_bytes": size, "tflite": {**ops, "variant": params.variant, **check}},
        pipeline={
            **spec,
            **in_graph,
            "output": "sentence_embedding" if task == "embedding" else "logits",
            "inputs": list(INPUT_NAMES),
            "fixed_shape": [1, params.seq_len],
            # Devices tokenize no further than the graph can take.
            "max_seq_len": params.seq_len,
            "input_dtype": "int32",
            "runtime": "litert",
        },
    )


def _require_converters() -> None:
    """Fail with the fix, not a traceback, on a server installed without the extras."""
    import importlib.util

    needed = ("torch", "transformers", "litert_torch", "ai_edge_quantizer", "ai_edge_litert")

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except ImportError:
            return True

    missing = [name for name in needed if absent(name)]
    if missing:
        raise ExportError(
            f"the tflite recipe needs {', '.join(missing)} on the worker: "
            "pip install -e '.[torch,tflite]'"
        )


def record_ops(path: Path) -> dict[str, Any]:
    """Every op with its version(s), and the minimum runtime version, from the flatbuffer."""
    from compression.pipeline.inspect import inspect_model

    info = inspect_model(path, "tflite")
    return {
        "ops": info["ops"],
        "op_versions": info["op_versions"],
        "min_runtime_version": info["min_runtime_version"],
    }


def _graph(src: Path, task: str, spec: dict[str, Any]) -> Any:
    """The model wrapped to take the fixed-shape int32 inputs and return one tensor."""
    import torch
    import transformers

    loader = (
        transformers.AutoModelForSequenceClassification
        if task == "classifier"
        else transformers.AutoModel
    )
    # Eager attention: SDPA traces into a fused op LiteRT cannot lower.
    model = loader.from_pretrained(str(src), attn_implementation="eager", local_files_only=True)
    model.eval()
    pool = _pooler(str(spec.get("pooling", "mean")), bool(spec.get("normalize", True)))

    class FixedShapeGraph(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            mask = attention_mask.to(torch.float32)
            additive = (1.0 - mask[:, None, None, :]) * MASK_NEGATIVE
            out = self.inner(
                input_ids=input_ids.to(torch.int64),
                attention_mask=additive,
                token_type_ids=torch.zeros_like(input_ids, dtype=torch.int64),
            )
            if task == "classifier":
                logits: torch.Tensor = out.logits
                return logits
            return pool(out.last_hidden_state, mask)

    return FixedShapeGraph(model).eval()


def _pooler(mode: str, normalize: bool) -> Callable[[Any, Any], Any]:
    import torch

    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1)
        if mode == "cls":
            vector = hidden[:, 0]
        elif mode == "max":
            vector = (hidden + (1.0 - weights) * MASK_NEGATIVE * 1e3).amax(dim=1)
        else:
            vector = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if normalize:
            vector = vector / vector.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return vector

    return pool


def _sample_inputs(seq_len: int, vocab: int) -> dict[str, Any]:
    """A realistic traced example: [CLS] words [SEP] then padding."""
    import torch

    generator = torch.Generator().manual_seed(0)
    words = max(1, min(seq_len - 2, seq_len // 2))
    ids = torch.zeros((1, seq_len), dtype=torch.int32)
    ids[0, 1 : 1 + words] = torch.randint(min(5, vocab - 1), vocab, (words,), generator=generator)
    ids[0, 0], ids[0, words + 1] = min(101, vocab - 1), min(102, vocab - 1)
    mask = (torch.arange(seq_len) < words + 2).to(torch.int32)[None, :]
    return {"input_ids": ids, "attention_mask": mask}


def _convert(graph: Any, sample: dict[str, Any], path: Path) -> None:
    import litert_torch
    import torch

    with torch.no_grad():
        edge_model = litert_torch.convert(graph, sample_kwargs=sample)
    edge_model.export(str(path))


def quantize_variant(float_path: Path, out_path: Path, variant: str) -> None:
    """Write ``variant`` of the float .tflite at ``float_path`` to ``out_path``."""
    if variant == "fp32":
        shutil.copyfile(float_path, out_path)
        return
    from ai_edge_quantizer import quantizer, recipe

    scheme = recipe.dynamic_wi8_afp32() if variant == "dynamic-int8" else None
    scheme = scheme or recipe.weight_only_wi8_afp32()
    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(scheme)
    result = qt.quantize()
    out_path.unlink(missing_ok=True)
    result.export_model(str(out_path))


def _check_against_torch(
    graph: Any, path: Path, sample: dict[str, Any], task: str
) -> dict[str, float]:
    """Run the converted file once and compare it with the PyTorch graph, so a broken
    conversion fails here rather than on a device."""
    import torch

    from compression.pipeline.tflite_session import TfliteSession

    session = TfliteSession(path)
    names = session.input_names
    if sorted(names) != sorted(INPUT_NAMES):
        raise ExportError(f"converted graph has inputs {names}, expected {list(INPUT_NAMES)}")
    got = session.run(None, {k: v.numpy() for k, v in sample.items()})[0].astype(np.float64)
    with torch.no_grad():
        want = graph(**sample).numpy().astype(np.float64)
    if not np.all(np.isfinite(got)):
        raise ExportError("the converted model produced non-finite outputs")
    if task == "classifier":
        return {"check_max_abs_error": round(float(np.abs(got - want).max()), 6)}
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want) or 1.0))
    return {"check_cosine": round(cosine, 6)}
