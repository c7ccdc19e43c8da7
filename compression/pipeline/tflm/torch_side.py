"""The PyTorch half of the ``tflm`` recipe: load a small BERT-family model, swap its
GELU for a form TFLite Micro has kernels for, wrap it with a fixed-shape signature and
convert it to a float .tflite with litert-torch (no TensorFlow).

The wrapper takes ``input_ids`` (int32) and ``attention_mask`` (float 0/1, quantized to
int8 later) and builds the additive mask itself (-30, not -inf: -inf does not survive
int8). Embedding models pool and normalise inside the graph; the normalisation uses
RSQRT because TFLM's SQRT has no int8 kernel.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from compression.pipeline.errors import InvalidModelError
from compression.pipeline.inspect import inspect_model
from compression.pipeline.tflm.params import TflmError, TflmParams, TooLargeError

__all__ = [
    "count_parameters",
    "detect_task",
    "load_model",
    "micro_wrapper",
    "swap_gelu",
    "to_float_tflite",
]

MASK_FILL = -30.0


def count_parameters(model_dir: Path) -> int:
    """Parameters from the safetensors headers, without loading any weight."""
    try:
        return int(inspect_model(model_dir, "hf-dir")["parameters"])
    except InvalidModelError as exc:
        raise TflmError(str(exc)) from exc


def detect_task(model_dir: Path, requested: str) -> str:
    if requested != "auto":
        return requested
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    archs = config.get("architectures") or []
    return "classifier" if any("SequenceClassification" in a for a in archs) else "embedding"


def check_size(model_dir: Path, params: TflmParams) -> int:
    """Raises TooLargeError above ``params.max_parameters``; returns the count."""
    count = count_parameters(model_dir)
    if count > params.max_parameters:
        raise TooLargeError(
            f"model has {count:,} parameters; the tflm recipe accepts at most "
            f"{params.max_parameters:,} (a microcontroller's flash). Distil or prune it "
            "first, or raise max_parameters if your target has room."
        )
    return count


def load_model(model_dir: Path, task: str) -> Any:
    """The model in eval mode, eager attention (SDPA does not lower to TFLM ops)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    loader = (
        transformers.AutoModelForSequenceClassification
        if task == "classifier"
        else transformers.AutoModel
    )
    # use_safetensors: never fall back to pytorch_model.bin, a pickle from an upload.
    model = loader.from_pretrained(
        str(model_dir), attn_implementation="eager", local_files_only=True, use_safetensors=True
    )
    base = getattr(model, "base_model", model)
    if not hasattr(base, "embeddings") or not hasattr(getattr(base, "encoder", None), "layer"):
        raise TflmError(
            f"tflm supports BERT-family encoders (embeddings + encoder.layer); "
            f"{type(model).__name__} is not one"
        )
    return model.eval()


def _gelu_module(form: str) -> Any:
    import torch

    class SigmoidGelu(torch.nn.Module):
        # x * sigmoid(1.702 x): LOGISTIC + MUL, both with int8 TFLM kernels.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    class TanhGelu(torch.nn.Module):
        # The tanh approximation of GELU: TANH + MUL + ADD.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
            return 0.5 * x * (1.0 + torch.tanh(inner))

    return SigmoidGelu() if form == "sigmoid" else TanhGelu()


def swap_gelu(model: Any, form: str) -> int:
    """Replace every BERT intermediate activation in place; returns how many.

    Raises:
        TflmError: the model has no activation this recipe knows how to swap.
    """
    swapped = 0
    for module in model.modules():
        if hasattr(module, "intermediate_act_fn"):
            module.intermediate_act_fn = _gelu_module(form)
            swapped += 1
    if not swapped:
        raise TflmError("found no intermediate activation (intermediate_act_fn) to replace")
    return swapped


def micro_wrapper(model: Any, task: str) -> Any:
    """A module with the fixed micro signature (input_ids, attention_mask) -> one tensor."""
    import torch

    base = getattr(model, "base_model", model)

    class MicroEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            additive = (1.0 - attention_mask[:, None, None, :]) * MASK_FILL
            hidden = base.embeddings(
                input_ids=input_ids,
                token_type_ids=torch.zeros_like(input_ids),
            )
            for layer in base.encoder.layer:
                out = layer(hidden, attention_mask=additive)
                hidden = out[0] if isinstance(out, tuple) else out
            if task == "classifier":
                logits: torch.Tensor = self.model.classifier(base.pooler(hidden))
                return logits
            weights = attention_mask[:, :, None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
            norm = (pooled * pooled).sum(-1, keepdim=True).clamp(min=1e-12)
            return pooled * torch.rsqrt(norm)

    return MicroEncoder().eval()


def sample_inputs(sequence_length: int) -> tuple[Any, Any]:
    import torch

    ids = torch.zeros((1, sequence_length), dtype=torch.int32)
    mask = torch.ones((1, sequence_length), dtype=torch.float32)
    return ids, mask


def to_float_tflite(wrapper: Any, sequence_length: int, path: Path) -> None:
    """Convert the wrapper to a float32 .tflite with litert-torch."""
    import litert_torch

    ids, mask = sample_inputs(sequence_length)
    # Keyword samples name the signature inputs (input_ids, attention_mask).
    edge = litert_torch.convert(wrapper, sample_kwargs={"input_ids": ids, "attention_mask": mask})
    edge.export(str(path))
