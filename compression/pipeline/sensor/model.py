"""The tiny sensor Transformer (PyTorch): what the recipe trains from scratch.

Built from the patterns that make Transformers fit microcontrollers: a strided conv
front-end shortens the sequence before any attention; 1-4 pre-norm encoder layers with
*local* attention (a band mask: each token sees ``radius`` neighbours either side),
ReLU or the sigmoid form of GELU (TFLite Micro has no GELU kernel), BatchNorm (folds
into a per-channel multiply-add at inference, cheap in int8) or LayerNorm; mean pooling
and a linear head. The per-channel standardisation of the raw samples is inside the
graph, so a device feeds raw sensor values.

Every operator lowers to a TFLite builtin with an int8 TFLM kernel (CONV_2D,
FULLY_CONNECTED, BATCH_MATMUL, SOFTMAX, MEAN, ADD, MUL, LOGISTIC, RESHAPE, TRANSPOSE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Architecture", "SensorTransformer", "band_mask"]

# exp(-10) ~ 5e-5: masked neighbours vanish after softmax, and the score tensor's int8
# range is not stretched as far as by -30 (a step of ~0.1 for the scores that matter).
MASK_FILL = -10.0


@dataclass(frozen=True)
class Architecture:
    channels: int
    window: int
    outputs: int
    d_model: int = 32
    layers: int = 2
    heads: int = 2
    ff: int = 64
    subsample: int = 4
    attention_radius: int = 4
    activation: str = "relu"
    norm: str = "batch"
    # "classification": logits [1, outputs]; "forecast": next ``outputs`` steps per channel.
    head: str = "classification"

    @property
    def tokens(self) -> int:
        length = self.window
        for stride in _strides(self.subsample):
            length = (length + 2 * (_kernel(stride) // 2) - _kernel(stride)) // stride + 1
        return length


def _strides(subsample: int) -> list[int]:
    return [2] * int(math.log2(subsample)) or [1]


def _kernel(stride: int) -> int:
    return 5 if stride > 1 else 3


def band_mask(tokens: int, radius: int) -> torch.Tensor:
    """Additive [tokens, tokens] mask: 0 within ``radius``, MASK_FILL beyond (0 = global)."""
    index = torch.arange(tokens)
    far = (index[:, None] - index[None, :]).abs() > radius
    if radius <= 0:
        far = torch.zeros_like(far)
    return far.float() * MASK_FILL


class SigmoidGelu(nn.Module):
    # x * sigmoid(1.702 x): LOGISTIC + MUL, both with int8 TFLM kernels.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    return SigmoidGelu() if name == "gelu-sigmoid" else nn.ReLU()


class TokenNorm(nn.Module):
    """BatchNorm or LayerNorm over the feature axis of [batch, tokens, features]."""

    def __init__(self, kind: str, features: int):
        super().__init__()
        self.kind = kind
        self.norm: nn.Module = (
            nn.BatchNorm1d(features) if kind == "batch" else nn.LayerNorm(features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "batch":
            out: torch.Tensor = self.norm(x.transpose(1, 2)).transpose(1, 2)
            return out
        result: torch.Tensor = self.norm(x)
        return result


class LocalAttention(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.heads = arch.heads
        self.head_dim = arch.d_model // arch.heads
        self.qkv = nn.Linear(arch.d_model, 3 * arch.d_model)
        self.proj = nn.Linear(arch.d_model, arch.d_model)
        self.register_buffer("mask", band_mask(arch.tokens, arch.attention_radius))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # The 1/sqrt(d) scale is folded into q, so the scores need one int8 range only.
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-1, -2)
        weights = torch.softmax(scores + self.mask, dim=-1)
        out = (weights @ v).permute(0, 2, 1, 3).reshape(batch, tokens, width)
        result: torch.Tensor = self.proj(out)
        return result


class EncoderLayer(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.norm1 = TokenNorm(arch.norm, arch.d_model)
        self.attention = LocalAttention(arch)
        self.norm2 = TokenNorm(arch.norm, arch.d_model)
        self.ff = nn.Sequential(
            nn.Linear(arch.d_model, arch.ff),
            _activation(arch.activation),
            nn.Linear(arch.ff, arch.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        out: torch.Tensor = x + self.ff(self.norm2(x))
        return out


class SensorTransformer(nn.Module):
    """[batch, channels, window] raw samples -> logits or a forecast."""

    def __init__(self, arch: Architecture, mean: Any = None, std: Any = None):
        super().__init__()
        self.arch = arch
        mean_t = torch.zeros(arch.channels) if mean is None else torch.as_tensor(mean).float()
        std_t = torch.ones(arch.channels) if std is None else torch.as_tensor(std).float()
        self.register_buffer("shift", mean_t.reshape(1, arch.channels, 1))
        self.register_buffer("scale", (1.0 / std_t.clamp(min=1e-6)).reshape(1, arch.channels, 1))
        layers: list[nn.Module] = []
        width = arch.channels
        for stride in _strides(arch.subsample):
            kernel = _kernel(stride)
            layers += [
                nn.Conv1d(width, arch.d_model, kernel, stride=stride, padding=kernel // 2),
                nn.BatchNorm1d(arch.d_model),
                _activation(arch.activation),
            ]
            width = arch.d_model
        self.front = nn.Sequential(*layers)
        self.position = nn.Parameter(torch.zeros(1, arch.tokens, arch.d_model))
        nn.init.normal_(self.position, std=0.02)
        self.encoder = nn.ModuleList(EncoderLayer(arch) for _ in range(arch.layers))
        self.final_norm = TokenNorm(arch.norm, arch.d_model)
        out = arch.outputs if arch.head == "classification" else arch.outputs * arch.channels
        self.head = nn.Linear(arch.d_model, out)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        # The argument's name becomes the exported input's name.
        shift, scale = self._standardisation()
        x = (samples - shift) * scale
        tokens = self.front(x).transpose(1, 2) + self.position
        for layer in self.encoder:
            tokens = layer(tokens)
        pooled = self.final_norm(tokens).mean(dim=1)
        out: torch.Tensor = self.head(pooled)
        if self.arch.head == "forecast":
            # Forecast in standardised units: one int8 range fits every channel (in the
            # sensor's units the range would span the offset and lose the detail).
            out = out.reshape(-1, self.arch.channels, self.arch.outputs)
        return out

    def _standardisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self.shift, self.scale
        assert isinstance(shift, torch.Tensor) and isinstance(scale, torch.Tensor)
        return shift, scale

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
