"""Training the sensor Transformer from scratch on CPU.

Small data (BasicMotions has 40 training windows) needs augmentation more than epochs:
per-channel gain, jitter and a random time shift. Imbalanced classes get
inverse-frequency weights in the loss. The thread count is explicit because the
machine is shared.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.pipeline.sensor.data import SensorData
from compression.pipeline.sensor.model import Architecture, SensorTransformer
from compression.pipeline.sensor.params import SensorDataError, SensorParams

__all__ = ["TrainResult", "channel_stats", "split_forecast", "train_classifier", "train_forecaster"]

Report = Callable[[float, str], None]


@dataclass
class TrainResult:
    model: SensorTransformer
    seconds: float
    cpu_seconds: float
    epochs: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over all windows and steps (std floor 1e-3)."""
    mean = x.mean(axis=(0, 2))
    std = np.maximum(x.std(axis=(0, 2)), 1e-3)
    return mean.astype(np.float32), std.astype(np.float32)


def _augment(batch: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, c, t = batch.shape
    gain = 1.0 + 0.1 * torch.randn(n, c, 1, generator=generator)
    noise = 0.03 * std.reshape(1, c, 1) * torch.randn(n, c, t, generator=generator)
    shifted = torch.empty_like(batch)
    for i in range(n):
        shift = int(torch.randint(-t // 8, t // 8 + 1, (1,), generator=generator))
        shifted[i] = torch.roll(batch[i], shifts=shift, dims=-1)
    return shifted * gain + noise


def _class_weights(y: np.ndarray, classes: int, balance: bool) -> torch.Tensor:
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    if not balance:
        return torch.ones(classes)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / classes, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _split(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices (no validation when share is 0)."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(idx) * share)
        val.extend(idx[:cut])
        train.extend(idx[cut:])
    return np.asarray(sorted(train)), np.asarray(sorted(val), dtype=np.int64)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _setup(params: SensorParams) -> torch.Generator:
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    return generator


def architecture(
    params: SensorParams, channels: int, window: int, outputs: int, head: str
) -> Architecture:
    arch = Architecture(
        channels=channels,
        window=window,
        outputs=outputs,
        d_model=params.d_model,
        layers=params.layers,
        heads=params.heads,
        ff=params.ff,
        subsample=params.subsample,
        attention_radius=params.attention_radius,
        activation=params.activation,
        norm=params.norm,
        head=head,
    )
    if arch.tokens < 2:
        raise SensorDataError(f"window {window} is too short for subsample {params.subsample}")
    return arch


def train_classifier(data: SensorData, params: SensorParams, report: Report) -> TrainResult:
    """Train on labelled windows; keeps the best validation epoch when there is one.

    Raises:
        SensorDataError: no labels, or fewer than two classes.
    """
    if data.y is None:
        raise SensorDataError("classification needs labelled windows (use task=anomaly otherwise)")
    classes = len(data.class_names)
    if len(np.unique(data.y)) < 2:
        raise SensorDataError("classification needs at least two classes in the training data")
    generator = _setup(params)
    started, cpu_started = time.perf_counter(), time.process_time()
    train_idx, val_idx = _split(data.y, params.validation_split, params.seed)
    mean, std = channel_stats(data.x[train_idx])
    arch = architecture(params, data.x.shape[1], data.x.shape[2], classes, "classification")
    model = SensorTransformer(arch, mean, std)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    std_t = torch.from_numpy(std)
    loss_fn = nn.CrossEntropyLoss(
        weight=_class_weights(data.y[train_idx], classes, params.balance_classes),
        label_smoothing=0.1,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=0.01)
    steps = params.epochs * max(1, -(-len(train_idx) // params.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, params.learning_rate, total_steps=steps
    )
    best: tuple[float, int, dict[str, Any]] = (-1.0, 0, {})
    history = []
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=generator)]
        total = 0.0
        for start in range(0, len(order), params.batch_size):
            batch = order[start : start + params.batch_size]
            if len(batch) < 2:
                continue  # BatchNorm needs two samples
            optimizer.zero_grad()
            loss = loss_fn(model(_augment(x[batch], std_t, generator)), y[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        if epoch % 10 == 0 or epoch == params.epochs:
            val = _accuracy(model, x[val_idx], y[val_idx]) if len(val_idx) else float("nan")
            history.append({"epoch": epoch, "loss": total / len(train_idx), "val_accuracy": val})
            if len(val_idx) and val >= best[0]:
                best = (val, epoch, copy.deepcopy(model.state_dict()))
            report(
                epoch / params.epochs,
                f"epoch {epoch}/{params.epochs} loss {total / len(train_idx):.3f}",
            )
    if best[2]:
        model.load_state_dict(best[2])
    model.eval()
    return TrainResult(
        model=model,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        epochs=params.epochs,
        best_epoch=best[1] or params.epochs,
        history=history,
    )


def split_forecast(x: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows [n, c, t] -> (context [n, c, t - horizon], target [n, c, horizon])."""
    return x[:, :, :-horizon], x[:, :, -horizon:]


def train_forecaster(
    context: np.ndarray, target: np.ndarray, params: SensorParams, report: Report
) -> TrainResult:
    """Learn to forecast the next ``horizon`` steps of normal data (mean squared error)."""
    generator = _setup(params)
    started, cpu_started = time.perf_counter(), time.process_time()
    mean, std = channel_stats(context)
    arch = architecture(params, context.shape[1], context.shape[2], target.shape[2], "forecast")
    model = SensorTransformer(arch, mean, std)
    x, y = torch.from_numpy(context), torch.from_numpy(target)
    scale = torch.from_numpy(1.0 / std).reshape(1, -1, 1)
    shift = torch.from_numpy(mean).reshape(1, -1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=0.01)
    steps = params.epochs * max(1, -(-len(x) // params.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, params.learning_rate, total_steps=steps
    )
    history = []
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(order), params.batch_size):
            batch = order[start : start + params.batch_size]
            if len(batch) < 2:
                continue
            optimizer.zero_grad()
            # The model forecasts in standardised units: every channel counts the same.
            loss = ((model(x[batch]) - (y[batch] - shift) * scale) ** 2).mean()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        if epoch % 10 == 0 or epoch == params.epochs:
            history.append({"epoch": epoch, "loss": total / len(x)})
            report(epoch / params.epochs, f"epoch {epoch}/{params.epochs} mse {total / len(x):.4f}")
    model.eval()
    return TrainResult(
        model=model,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        epochs=params.epochs,
        best_epoch=params.epochs,
        history=history,
    )
