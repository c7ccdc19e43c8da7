"""Simulated int8 for quantization-aware fine-tuning.

The fine-tuned model is later quantized by an ``onnx-int8-auto`` candidate (SmoothQuant
scales, fp32 outlier channels, saturation-safe per-column int8 weights, one u8 range per
call for activations). Training sees the same arithmetic, so the weights learn to absorb
its rounding. Rounding passes gradients straight through (STE); the ranges and the
SmoothQuant scales are constants, as they are in the exported graph.

Only the encoder's Linear layers and the embedding tables are simulated: those are the
MatMuls and Gathers onnxruntime quantizes in an exported BERT-style encoder.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from compression.pipeline.auto_int8.candidates import Candidate
from compression.pipeline.auto_int8.graph import matmul_kind

__all__ = ["LinearPlan", "fake_quant", "plan_linears"]


@dataclass(frozen=True)
class LinearPlan:
    """How one Linear is quantized: SmoothQuant with exponent ``alpha`` over the
    activation maxima ``peak`` (None: no smoothing), the ``outliers`` input channels
    computed in fp32 beside the int8 product; or not at all.

    The scales are recomputed from the *current* weights of the ``group`` (the Linears
    reading the same input) at every call, as the graph rewrite computes them from the
    final weights: a scale frozen at the start would drift from the exported one as the
    weights move, and the learned rounding would not survive the export.
    """

    peak: Tensor
    alpha: float | None
    outliers: Tensor
    group: tuple[str, ...]
    quantized: bool = True

    def scales(self, group_weights: list[Tensor]) -> Tensor:
        """``auto_int8.graph._smooth_scales`` in torch (constant to the gradient)."""
        if self.alpha is None:
            return torch.ones_like(self.peak)
        with torch.no_grad():
            wmax = torch.stack([w.abs().amax(0) for w in group_weights]).amax(0)
            scales = self.peak.clamp(min=1e-5) ** self.alpha / wmax.clamp(min=1e-5) ** (
                1 - self.alpha
            )
            return scales.clamp(1e-2, 1e2)


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the encoder (not a pooler or classifier head)."""
    encoder = getattr(model, "encoder", None) or getattr(
        getattr(model, "base_model", None), "encoder", None
    )
    if encoder is None:
        return {}
    return {n: m for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}


def plan_linears(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], candidate: Candidate
) -> dict[str, LinearPlan]:
    """Per-channel activation maxima on ``batches`` (rows of one text each, as the
    recipe calibrates), then each Linear's group, SmoothQuant exponent and outlier
    channels, as ``auto_int8.graph.smooth_and_split`` chooses them."""
    linears = encoder_linears(model)
    absmax: dict[str, Tensor] = {}
    first_call: list[tuple[Tensor, str]] = []

    def hook(name: str) -> Any:
        def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach()
            peak = x.reshape(-1, x.shape[-1]).abs().amax(0)
            absmax[name] = torch.maximum(absmax[name], peak) if name in absmax else peak
            if len(first_call) < len(linears):
                first_call.append((inputs[0], name))  # kept alive, so `is` is reliable

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            for feed in batches:
                model(**feed)
    finally:
        for h in handles:
            h.remove()
    groups: list[tuple[Tensor, list[str]]] = []  # (shared input, Linears reading it)
    for tensor, name in first_call:
        group = next((names for seen, names in groups if seen is tensor), None)
        if group is None:
            groups.append((tensor, [name]))
        else:
            group.append(name)
    plans: dict[str, LinearPlan] = {}
    for _, names in groups:
        plans.update(_group_plan(names, linears, absmax[names[0]], candidate))
    return plans


def _group_plan(
    names: list[str], linears: dict[str, nn.Linear], peak: Tensor, candidate: Candidate
) -> dict[str, LinearPlan]:
    out_features, in_features = linears[names[0]].weight.shape
    # torch stores [out, in]; the ONNX MatMul weight is [K, N] = [in, out].
    kind = matmul_kind(in_features, out_features, shared=len(names) > 1)
    group = tuple(names)
    if kind in candidate.keep_fp32_kinds:
        none = torch.zeros(0, dtype=torch.long)
        return {n: LinearPlan(peak, None, none, group, quantized=False) for n in names}
    k = candidate.outliers.get(kind, 0)
    outliers = torch.sort(torch.argsort(peak, descending=True)[:k]).values
    alpha = candidate.smooth_alpha.get(kind)
    return {n: LinearPlan(peak, alpha, outliers, group) for n in names}


# --------------------------------------------------------------------------
# The simulated arithmetic


def _straight_through(x: Tensor, rounded: Tensor) -> Tensor:
    return x + (rounded - x).detach()


def _weight_int8(weight: Tensor, saturation_safe: bool) -> Tensor:
    """Per-output-channel symmetric int8; saturation-safe scales as
    ``auto_int8.graph._pair_safe`` (pairs of adjacent input rows)."""
    with torch.no_grad():
        scale = weight.abs().amax(1) / 127
        if saturation_safe:
            a, b = weight[:, 0::2], weight[:, 1::2]
            width = min(a.shape[1], b.shape[1])
            a, b = a[:, :width], b[:, :width]
            same = torch.sign(a) == torch.sign(b)
            pair = torch.where(same, a.abs() + b.abs(), torch.zeros_like(a)).amax(1)
            scale = torch.maximum(scale, pair / 128)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    return _straight_through(weight, torch.round(weight / scale).clamp(-127, 127) * scale)


def _activation_u8(x: Tensor, mask: Tensor | None) -> Tensor:
    """One asymmetric u8 range per text, over its real tokens (what DynamicQuantizeLinear
    computes when each text runs alone, as on the device)."""
    with torch.no_grad():
        valid = (
            mask[:, :, None].bool() if mask is not None else torch.ones_like(x, dtype=torch.bool)
        )
        big = torch.finfo(x.dtype).max
        lo = torch.where(valid, x, big).amin(dim=(1, 2), keepdim=True).clamp(max=0)
        hi = torch.where(valid, x, -big).amax(dim=(1, 2), keepdim=True).clamp(min=0)
        scale = ((hi - lo) / 255).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
    rounded = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    return _straight_through(x, rounded)


def _table_u8(weight: Tensor) -> Tensor:
    """Embedding tables: one asymmetric u8 range per table (quantize_dynamic's Gather)."""
    with torch.no_grad():
        lo, hi = weight.min().clamp(max=0), weight.max().clamp(min=0)
        scale = ((hi - lo) / 255).clamp(min=1e-12)
        zero = torch.round(-lo / scale)
    rounded = (torch.clamp(torch.round(weight / scale) + zero, 0, 255) - zero) * scale
    return _straight_through(weight, rounded)


class _Mask:
    """The attention mask of the batch being run, for the per-text activation ranges."""

    value: Tensor | None = None


def _linear_forward(
    plan: LinearPlan, group: list[nn.Linear], mask: _Mask, saturation_safe: bool
) -> Any:
    kept = torch.ones_like(plan.peak)
    kept[plan.outliers] = 0.0  # outlier channels leave the int8 path

    def forward(self: nn.Linear, x: Tensor) -> Tensor:
        if x.dim() != 3:
            return nn.functional.linear(x, self.weight, self.bias)
        scales = plan.scales([m.weight for m in group])
        inverse = kept / scales
        weight = _weight_int8(self.weight * (scales * kept), saturation_safe)
        y = nn.functional.linear(_activation_u8(x * inverse, mask.value), weight, self.bias)
        if plan.outliers.numel():
            y = y + x[..., plan.outliers] @ self.weight[:, plan.outliers].T
        return y

    return forward


def _table_rows(weight: Tensor) -> Tensor:
    """Embedding tables with one symmetric int8 scale per row (``embedding_rows``)."""
    scale = (weight.abs().amax(1, keepdim=True) / 127).detach()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return _straight_through(weight, torch.round(weight / scale).clamp(-127, 127) * scale)


def _embedding_forward(per_row: bool) -> Any:
    table = _table_rows if per_row else _table_u8

    def forward(self: nn.Embedding, ids: Tensor) -> Tensor:
        return nn.functional.embedding(ids, table(self.weight), self.padding_idx)

    return forward


@contextmanager
def fake_quant(
    model: nn.Module, plans: dict[str, LinearPlan], candidate: Candidate
) -> Iterator[_Mask]:
    """Run ``model`` with simulated int8 inside the block. Set ``.value`` of the yielded
    object to each batch's attention mask before calling the model."""
    mask = _Mask()
    linears = encoder_linears(model)
    embeddings = getattr(model, "embeddings", None) or getattr(
        getattr(model, "base_model", None), "embeddings", None
    )
    patched: list[nn.Module] = []
    try:
        for name, linear in linears.items():
            if name in plans and plans[name].quantized:
                group = [linears[n] for n in plans[name].group]
                forward = _linear_forward(plans[name], group, mask, candidate.saturation_safe)
                linear.forward = types.MethodType(forward, linear)  # type: ignore[method-assign]
                patched.append(linear)
        for table in embeddings.modules() if embeddings is not None else ():
            if isinstance(table, nn.Embedding):
                forward = _embedding_forward(candidate.embedding_rows)
                table.forward = types.MethodType(forward, table)  # type: ignore[method-assign]
                patched.append(table)
        yield mask
    finally:
        for module in patched:
            del module.forward  # back to the class's forward
