"""Measure the importance of attention heads and FFN neurons, and cut them out of a BERT
encoder in place, leaving smaller dense weight matrices (a real speed-up on any runtime,
unlike zeroed weights).

Head importance is measured by ablation: the drop in pooled-embedding cosine (or the mean
squared logit change for classifiers) when one head's output is zeroed, on sample texts.
Neuron importance is the mean absolute activation times the norm of the neuron's outgoing
weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compression.pipeline.distill.train import Tokens, mean_pool

__all__ = [
    "head_importance",
    "neuron_importance",
    "plan_heads",
    "prune_ffn",
    "prune_heads",
]


def _layers(model: Any) -> Any:
    return getattr(model, "base_model", model).encoder.layer


def _summary(model: Any, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    if task == "classifier":
        return out.logits
    return mean_pool(out.last_hidden_state, batch["attention_mask"])


def _damage(task: str, base: torch.Tensor, changed: torch.Tensor) -> float:
    if task == "classifier":
        return float(((base - changed) ** 2).mean())
    return float(1 - torch.nn.functional.cosine_similarity(base, changed, dim=-1).mean())


def head_importance(model: Any, task: str, tokens: Tokens, texts: list[str]) -> list[list[float]]:
    """importance[layer][head]: output damage when that head alone is silenced."""
    batch = tokens(texts)
    model.eval()
    scores: list[list[float]] = []
    with torch.no_grad():
        base = _summary(model, task, batch)
        for layer in _layers(model):
            attn = layer.attention.self
            size = attn.attention_head_size
            row = []
            for head in range(attn.num_attention_heads):
                hook = attn.register_forward_hook(_silence(head * size, (head + 1) * size))
                try:
                    row.append(_damage(task, base, _summary(model, task, batch)))
                finally:
                    hook.remove()
            scores.append(row)
    return scores


def _silence(start: int, stop: int) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        context = output[0] if isinstance(output, tuple) else output
        context = context.clone()
        context[..., start:stop] = 0
        return (context, *output[1:]) if isinstance(output, tuple) else context

    return hook


def plan_heads(importance: list[list[float]], fraction: float) -> dict[int, list[int]]:
    """The least important heads across all layers, at least one head kept per layer."""
    total = sum(len(r) for r in importance)
    budget = round(total * fraction)
    ranked = sorted(
        (score, layer, head)
        for layer, row in enumerate(importance)
        for head, score in enumerate(row)
    )
    plan: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if budget == 0:
            break
        if len(plan.get(layer, [])) + 1 >= len(importance[layer]):
            continue
        plan.setdefault(layer, []).append(head)
        budget -= 1
    return {layer: sorted(heads) for layer, heads in sorted(plan.items())}


def _shrink(linear: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A smaller Linear keeping output rows (dim 0) or input columns (dim 1) ``keep``."""
    weight = linear.weight.detach().index_select(dim, keep).clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, keep).clone()
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    out.weight = nn.Parameter(weight)
    if bias is not None:
        out.bias = nn.Parameter(bias)
    return out


def prune_heads(model: Any, plan: dict[int, list[int]]) -> None:
    """Remove the planned heads in place (query/key/value rows, output columns)."""
    for index, heads in plan.items():
        layer = _layers(model)[index]
        attn = layer.attention.self
        size = attn.attention_head_size
        kept_heads = [h for h in range(attn.num_attention_heads) if h not in heads]
        keep = torch.tensor(
            [h * size + i for h in kept_heads for i in range(size)], dtype=torch.long
        )
        attn.query = _shrink(attn.query, keep, 0)
        attn.key = _shrink(attn.key, keep, 0)
        attn.value = _shrink(attn.value, keep, 0)
        layer.attention.output.dense = _shrink(layer.attention.output.dense, keep, 1)
        attn.num_attention_heads = len(kept_heads)
        attn.all_head_size = len(keep)


def neuron_importance(model: Any, tokens: Tokens, texts: list[str]) -> list[torch.Tensor]:
    """importance[layer][neuron]: mean |activation| x norm of its outgoing weights."""
    batch = tokens(texts)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    sums: list[torch.Tensor] = []
    hooks = []
    for layer in _layers(model):

        def keep_sum(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            sums.append((output.abs() * mask).sum(dim=(0, 1)) / mask.sum())

        hooks.append(layer.intermediate.register_forward_hook(keep_sum))
    model.eval()
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return [
        act * layer.output.dense.weight.detach().norm(dim=0)
        for act, layer in zip(sums, _layers(model), strict=True)
    ]


def prune_ffn(model: Any, importance: list[torch.Tensor], fraction: float) -> int:
    """Keep the same number of most important neurons in every layer (so the model stays
    a standard config with a smaller ``intermediate_size``); returns that number."""
    width = int(importance[0].shape[0])
    keep_n = max(1, round(width * (1 - fraction)))
    for layer, scores in zip(_layers(model), importance, strict=True):
        keep = torch.sort(torch.topk(scores, keep_n).indices).values
        layer.intermediate.dense = _shrink(layer.intermediate.dense, keep, 0)
        layer.output.dense = _shrink(layer.output.dense, keep, 1)
    model.config.intermediate_size = keep_n
    return keep_n
