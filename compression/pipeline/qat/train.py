"""The fine-tuning loop: the student runs under simulated int8 and learns to reproduce
the fp32 teacher's embeddings and token states."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compression.pipeline.auto_int8.candidates import Candidate
from compression.pipeline.evaluate import embedding_fidelity, l2_normalize, mean_pool
from compression.pipeline.qat.fakequant import LinearPlan, fake_quant
from compression.pipeline.qat.params import QatParams
from compression.pipeline.textdata import encode

__all__ = ["Outcome", "batch_feed", "fine_tune", "simulated_fidelity", "text_embeddings"]


@dataclass
class Outcome:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def batch_feed(tokenizer: Path, texts: list[str], max_length: int) -> dict[str, Tensor]:
    enc = encode(tokenizer, texts, max_length=max_length)
    return {
        "input_ids": torch.from_numpy(enc.input_ids),
        "attention_mask": torch.from_numpy(enc.attention_mask),
        "token_type_ids": torch.from_numpy(enc.token_type_ids),
    }


def _pooled(hidden: Tensor, mask: Tensor) -> Tensor:
    weights = mask[:, :, None].to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return nn.functional.normalize(pooled, dim=-1)


def fine_tune(
    teacher: nn.Module,
    student: nn.Module,
    plans: dict[str, LinearPlan],
    candidate: Candidate,
    texts: list[str],
    tokenizer: Path,
    params: QatParams,
    progress: Callable[[float, str, str], None],
) -> Outcome:
    """``params.steps`` AdamW steps on random batches of ``texts``; linear warm-up, then
    linear decay to zero. Both models stay in eval mode: dropout would be noise the
    exported model never sees."""
    rng = random.Random(params.seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=params.learning_rate, weight_decay=0.0)
    warmup, total = max(1, params.warmup_steps), params.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / total)
    )
    outcome = Outcome(steps=0, seconds=0.0)
    started = time.monotonic()
    with fake_quant(student, plans, candidate) as mask:
        for step in range(1, total + 1):
            feed = batch_feed(
                tokenizer, rng.sample(texts, min(params.batch_size, len(texts))), params.max_length
            )
            with torch.no_grad():
                target = teacher(**feed).last_hidden_state
            mask.value = feed["attention_mask"]
            hidden = student(**feed).last_hidden_state
            valid = feed["attention_mask"][:, :, None].to(hidden.dtype)
            mine = _pooled(hidden, feed["attention_mask"])
            theirs = _pooled(target, feed["attention_mask"])
            loss_cos = (1 - (mine * theirs).sum(-1)).mean()
            loss_tok = (((hidden - target) ** 2) * valid).sum() / (valid.sum() * hidden.shape[-1])
            # In-batch similarities: the ranking nearest-neighbour agreement measures.
            loss_rel = ((mine @ mine.T - theirs @ theirs.T) ** 2).mean()
            loss = (
                params.cosine_weight * loss_cos
                + params.token_weight * loss_tok
                + params.relation_weight * loss_rel
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {step}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            outcome.steps = step
            if step % 25 == 0 or step == total:
                outcome.history.append(
                    {
                        "step": step,
                        "cosine_loss": round(loss_cos.item(), 6),
                        "token_loss": round(loss_tok.item(), 6),
                    }
                )
                progress(
                    step / total,
                    "fine-tuning",
                    f"step {step}/{total}: 1 - cosine {loss_cos.item():.5f}",
                )
    outcome.seconds = time.monotonic() - started
    return outcome


def text_embeddings(
    model: nn.Module,
    texts: list[str],
    tokenizer: Path,
    max_length: int,
    simulate: tuple[dict[str, LinearPlan], Candidate] | None = None,
) -> Any:
    """Mean-pooled, normalised embeddings of ``texts``, each text run alone (as on a
    device); under simulated int8 when ``simulate`` gives (plans, candidate)."""
    import numpy as np

    rows = []
    enc = encode(tokenizer, texts, max_length=max_length)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        mask = stack.enter_context(fake_quant(model, *simulate)) if simulate else None
        for i in range(len(texts)):
            row = enc.row(i)
            attention = torch.from_numpy(row.attention_mask)
            if mask is not None:
                mask.value = attention
            hidden = model(
                input_ids=torch.from_numpy(row.input_ids),
                attention_mask=attention,
                token_type_ids=torch.from_numpy(row.token_type_ids),
            ).last_hidden_state.numpy()
            rows.append(mean_pool(hidden, row.attention_mask)[0])
    return l2_normalize(np.stack(rows))


def simulated_fidelity(
    model: nn.Module,
    reference: Any,
    simulate: tuple[dict[str, LinearPlan], Candidate],
    texts: list[str],
    tokenizer: Path,
    max_length: int,
) -> dict[str, Any]:
    """Fidelity of ``model`` under simulated int8 against ``reference`` embeddings."""
    simulated = text_embeddings(model, texts, tokenizer, max_length, simulate)
    return embedding_fidelity(reference, simulated).to_dict()
