"""The training loop shared by distillation and pruning recovery.

Losses (student against the frozen teacher on the same batch):
* embedding models: ``cosine_weight·(1 - cos)`` and ``pooled_mse_weight·MSE`` on mean-pooled
  embeddings, plus ``token_weight·MSE`` on token states (padding masked out), plus
  ``relation_weight·KL`` between the teacher's and the student's softmax over in-batch
  similarities (the neighbour ranking);
* any task, when ``layer_weight`` > 0 and the student's layers were taken from the
  teacher: MSE between each student layer's output and its source teacher layer's;
* classifiers: ``KL(teacher‖student)`` on logits softened by ``temperature`` (scaled by
  T²), mixed with cross-entropy on the labels when the data has them.

AdamW with linear warm-up then linear decay. Every ``eval_every`` steps the held-out
fidelity is measured; the best student so far is kept and training stops after
``patience`` measurements without improvement. Every ``checkpoint_every`` steps the whole
state (student, optimizer, schedule, step, best) is written atomically to the checkpoint
folder, so a job that is re-delivered after its worker died, or started again after a
cancel, continues from there instead of starting over.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compression.pipeline.distill.data import TrainingTexts
from compression.pipeline.distill.params import DistillError, DistillParams
from compression.pipeline.evaluate import embedding_fidelity, nearest_neighbours
from compression.pipeline.runner import ProgressFn

__all__ = ["TrainOutcome", "Trainer", "checkpoint_lock"]

CHECKPOINT = "checkpoint.pt"
# Progress lines (which land in the job log) at most this often, in seconds.
REPORT_EVERY_S = 10.0
TICK_EVERY_S = 1.0


@dataclass
class TrainOutcome:
    steps: int
    total_steps: int
    best_score: float
    best_step: int
    stopped_early: bool
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)
    heldout: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Tokens:
    """The teacher's tokenizer (tokenizer.json), batches padded to their longest text."""

    def __init__(self, tokenizer_path: str | Path, max_length: int) -> None:
        from compression.pipeline.textdata import load_tokenizer

        self.tok = load_tokenizer(tokenizer_path)
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_length)

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encs = self.tok.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = e.ids, e.attention_mask, e.type_ids
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types),
        }


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


@contextmanager
def checkpoint_lock(folder: Path) -> Iterator[None]:
    """One trainer per checkpoint folder: a second run (a re-delivered job whose old
    converter is still exiting) waits for the first to let go."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("w") as handle:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DistillError("another run holds this job's checkpoint") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Trainer:
    """Trains ``student`` towards ``teacher`` on ``data`` (see the module docstring)."""

    def __init__(
        self,
        *,
        teacher: Any,
        student: Any,
        task: str,
        projection: torch.Tensor | None,
        data: TrainingTexts,
        params: DistillParams,
        tokens: Tokens,
        checkpoint_dir: Path | None,
        progress: ProgressFn,
        trainable: Callable[[Any], list[torch.nn.Parameter]] | None = None,
        layer_map: list[int] | None = None,
    ) -> None:
        self.teacher, self.student, self.task = teacher, student, task
        # Teacher layer each student layer was initialised from (the layer loss's pairs).
        self.layer_map = layer_map if params.layer_weight else None
        self.proj, self.data, self.p, self.tokens = projection, data, params, tokens
        self.checkpoint_dir, self.progress = checkpoint_dir, progress
        self.per_epoch = math.ceil(len(data.train) / params.batch_size)
        self.total_steps = self.per_epoch * params.epochs
        weights = (trainable or (lambda m: [p for p in m.parameters() if p.requires_grad]))(student)
        decay = [p for p in weights if p.ndim > 1]
        no_decay = [p for p in weights if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": params.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=params.learning_rate,
        )
        warmup = max(1, int(self.total_steps * params.warmup_ratio))
        total = self.total_steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.held = self._held_out_reference()
        self.lengths = [len(t) for t in data.train]
        self._orders: dict[int, list[int]] = {}
        self.parent_pid = os.getppid()

    # --- targets and losses -----------------------------------------------------------

    def _teacher(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        with torch.no_grad():
            out = self.teacher(**batch, output_hidden_states=self.layer_map is not None)
        target: dict[str, Any] = {}
        if self.layer_map is not None:
            # hidden_states[0] is the embedding output; layer k's output is [k + 1].
            target["layers"] = [self._project(out.hidden_states[k + 1]) for k in self.layer_map]
        if self.task == "classifier":
            return {**target, "logits": out.logits}
        hidden = self._project(out.last_hidden_state)
        return {**target, "hidden": hidden, "pooled": mean_pool(hidden, batch["attention_mask"])}

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if self.proj is None else hidden @ self.proj.T

    def _layer_loss(self, out: Any, target: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(target["layers"][0].dtype)
        losses = [
            ((s - t) ** 2 * m).sum() / (m.sum() * s.shape[-1])
            for s, t in zip(out.hidden_states[1:], target["layers"], strict=True)
        ]
        return torch.stack(losses).mean()

    def _relation_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n = student.shape[0]
        if n < 3:
            return student.new_zeros(())
        t = self.p.relation_temperature
        off = ~torch.eye(n, dtype=torch.bool)
        s_sim = F.normalize(student, dim=-1) @ F.normalize(student, dim=-1).T
        t_sim = F.normalize(teacher, dim=-1) @ F.normalize(teacher, dim=-1).T
        # Each row: a distribution over the other texts of the batch (self excluded).
        s_log = F.log_softmax(s_sim[off].view(n, n - 1) / t, -1)
        t_prob = F.softmax(t_sim[off].view(n, n - 1) / t, -1)
        return F.kl_div(s_log, t_prob, reduction="batchmean")

    def _loss(
        self, batch: dict[str, torch.Tensor], target: dict[str, torch.Tensor], labels: Any
    ) -> torch.Tensor:
        out = self.student(**batch, output_hidden_states=self.layer_map is not None)
        p = self.p
        extra = (
            p.layer_weight * self._layer_loss(out, target, batch["attention_mask"])
            if self.layer_map is not None
            else 0.0
        )
        if self.task == "classifier":
            t = p.temperature
            soft = F.kl_div(
                F.log_softmax(out.logits / t, -1),
                F.softmax(target["logits"] / t, -1),
                reduction="batchmean",
            ) * (t * t)
            if labels is None:
                return soft + extra
            hard = F.cross_entropy(out.logits, labels)
            return (1 - p.label_weight) * soft + p.label_weight * hard + extra
        mask = batch["attention_mask"]
        hidden = out.last_hidden_state
        pooled = mean_pool(hidden, mask)
        loss = p.cosine_weight * (1 - F.cosine_similarity(pooled, target["pooled"], dim=-1)).mean()
        loss = loss + p.pooled_mse_weight * F.mse_loss(pooled, target["pooled"])
        if p.token_weight:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            diff = ((hidden - target["hidden"]) ** 2 * m).sum() / (m.sum() * hidden.shape[-1])
            loss = loss + p.token_weight * diff
        if p.relation_weight:
            loss = loss + p.relation_weight * self._relation_loss(pooled, target["pooled"])
        return loss + extra

    # --- held-out fidelity ------------------------------------------------------------

    def _outputs(self, model: Any, texts: list[str], project: bool) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for i in range(0, len(texts), 64):
                batch = self.tokens(texts[i : i + 64])
                out = model(**batch)
                if self.task == "classifier":
                    rows.append(out.logits.numpy())
                    continue
                hidden = out.last_hidden_state
                if project and self.proj is not None:
                    hidden = hidden @ self.proj.T
                rows.append(mean_pool(hidden, batch["attention_mask"]).numpy())
        return np.concatenate(rows)

    def _held_out_reference(self) -> dict[str, np.ndarray]:
        texts = self.data.held_out
        ref = {"full": self._outputs(self.teacher, texts, project=False)}
        if self.proj is not None and self.task != "classifier":
            ref["projected"] = self._outputs(self.teacher, texts, project=True)
        return ref

    def measure(self) -> dict[str, float]:
        """Held-out fidelity of the student now: cosine and neighbour agreement (embeddings)
        or prediction agreement (classifiers); ``score`` is what early stopping watches."""
        was_training = self.student.training
        self.student.eval()
        cand = self._outputs(self.student, self.data.held_out, project=False)
        self.student.train(was_training)
        if self.task == "classifier":
            agree = float((cand.argmax(-1) == self.held["full"].argmax(-1)).mean())
            return {"agreement": agree, "score": agree}
        if self.proj is None:
            fid = embedding_fidelity(self.held["full"], cand)
            cos, nn = fid.cosine_mean, fid.nn_agreement
        else:
            cos = embedding_fidelity(self.held["projected"], cand).cosine_mean
            # Neighbours are compared with the full teacher: the ranking is what users keep.
            nn = float((nearest_neighbours(self.held["full"]) == nearest_neighbours(cand)).mean())
        return {"cosine_mean": cos, "nn_agreement": nn, "score": cos}

    # --- checkpoints ------------------------------------------------------------------

    def _save(
        self, step: int, best: dict[str, Any], history: list[dict[str, float]], stopped: bool
    ) -> None:
        if self.checkpoint_dir is None:
            return
        state = {
            "step": step,
            "stopped_early": stopped,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": best,
            "history": history,
            "total_steps": self.total_steps,
        }
        tmp = self.checkpoint_dir / f"{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_dir / CHECKPOINT)

    def _load(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None or not (self.checkpoint_dir / CHECKPOINT).is_file():
            return None
        # weights_only: only tensors and plain containers are unpickled, never code.
        state: dict[str, Any] = torch.load(
            self.checkpoint_dir / CHECKPOINT, weights_only=True, map_location="cpu"
        )
        if state.get("total_steps") != self.total_steps:
            return None  # another plan (data changed): start over
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state

    # --- the loop ---------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        """A shuffled order in which each batch holds texts of similar length: padding to
        the longest text of a random batch wastes about half of every step."""
        rng = np.random.default_rng(self.p.seed + epoch)
        order = [int(i) for i in rng.permutation(len(self.data.train))]
        size = self.p.batch_size
        window = size * 50
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [chunk[k : k + size] for k in range(0, len(chunk), size)]
        rng.shuffle(batches)
        return [i for batch in batches for i in batch]

    def _batch(self, step: int) -> tuple[dict[str, torch.Tensor], Any]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: self._order(epoch)}
        order = self._orders[epoch]
        idx = order[k * self.p.batch_size : (k + 1) * self.p.batch_size]
        batch = self.tokens([self.data.train[i] for i in idx])
        labels = None
        if self.data.labels is not None and self.task == "classifier":
            labels = torch.tensor([self.data.labels[i] for i in idx], dtype=torch.long)
        return batch, labels

    def run(self) -> TrainOutcome:
        torch.manual_seed(self.p.seed)
        started = time.monotonic()
        state = self._load()
        step = int(state["step"]) if state else 0
        resumed_from = step
        history: list[dict[str, float]] = list(state["history"]) if state else []
        best: dict[str, Any] = (
            state["best"] if state else {"score": -math.inf, "step": 0, "weights": None}
        )
        if best["weights"] is None:
            measured = self.measure()
            history.append({"step": 0, **measured})
            best = {"score": measured["score"], "step": 0, "weights": self._weights()}
        if resumed_from:
            self.progress(
                step / self.total_steps, "training", f"resumed from the checkpoint at step {step}"
            )
        stale, last_report, last_tick, loss_avg = 0, 0.0, 0.0, 0.0
        stopped_early = bool(state and state.get("stopped_early"))
        self.student.train()
        while step < self.total_steps and not stopped_early:
            self._check_orphaned()
            batch, labels = self._batch(step)
            loss = self._loss(batch, self._teacher(batch), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            step += 1
            value = loss.item()
            loss_avg = value if step == resumed_from + 1 else 0.9 * loss_avg + 0.1 * value
            if step % self.p.eval_every == 0 or step == self.total_steps:
                measured = self.measure()
                history.append({"step": step, "loss": round(loss_avg, 6), **measured})
                if measured["score"] > best["score"] + self.p.min_delta:
                    best = {"score": measured["score"], "step": step, "weights": self._weights()}
                    stale = 0
                else:
                    stale += 1
                last_report = self._report(step, loss_avg, started, resumed_from, measured)
                if stale >= self.p.patience:
                    stopped_early = True
            elif time.monotonic() - last_report > REPORT_EVERY_S:
                last_report = self._report(step, loss_avg, started, resumed_from, None)
            elif time.monotonic() - last_tick > TICK_EVERY_S:
                # A bare progress tick: the bar moves and a cancel is noticed within a second.
                self.progress(step / self.total_steps, "training", "")
                last_tick = time.monotonic()
            if not stopped_early and self._out_of_time(started):
                measured = self.measure()
                history.append({"step": step, "loss": round(loss_avg, 6), **measured})
                if measured["score"] > best["score"] + self.p.min_delta:
                    best = {"score": measured["score"], "step": step, "weights": self._weights()}
                last_report = self._report(step, loss_avg, started, resumed_from, measured)
                stopped_early = True
            if step % self.p.checkpoint_every == 0 or stopped_early:
                self._save(step, best, history, stopped_early)
            if stopped_early:
                break
        self.student.load_state_dict(best["weights"])
        self.student.eval()
        final = self.measure()
        return TrainOutcome(
            steps=step,
            total_steps=self.total_steps,
            best_score=float(best["score"]),
            best_step=int(best["step"]),
            stopped_early=stopped_early,
            resumed_from=resumed_from,
            history=history,
            heldout={k: round(v, 5) for k, v in final.items() if k != "score"},
            seconds=time.monotonic() - started,
        )

    def _out_of_time(self, started: float) -> bool:
        limit = self.p.max_minutes
        return limit is not None and time.monotonic() - started > 60 * limit

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def _check_orphaned(self) -> None:
        # The worker process that started us died (kill -9, OOM): stop, so the re-delivered
        # job's fresh run owns the checkpoint alone.
        if os.getppid() != self.parent_pid:
            os._exit(17)

    def _report(
        self,
        step: int,
        loss: float,
        started: float,
        resumed_from: int,
        measured: dict[str, float] | None,
    ) -> float:
        done = step - resumed_from
        per_step = (time.monotonic() - started) / max(done, 1)
        eta = per_step * (self.total_steps - step)
        parts = [f"step {step}/{self.total_steps}", f"loss {loss:.4f}"]
        if measured:
            parts += [f"held-out {k} {v:.4f}" for k, v in measured.items() if k != "score"]
        parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        self.progress(step / self.total_steps, "training", ", ".join(parts))
        return time.monotonic()
