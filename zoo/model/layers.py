"""Building blocks shared by models and mixers: RMSNorm, SwiGLU, rotary embeddings, short convolutions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """`W_down(silu(W_gate x) * W_up x)` (Shazeer 2020)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def swiglu_hidden(d_model: int, mlp_ratio: float, multiple_of: int = 8) -> int:
    """Llama's sizing: 2/3 of `mlp_ratio * d_model` (so the three matrices cost what two would), rounded up."""
    hidden = int(2 * mlp_ratio * d_model / 3)
    return multiple_of * -(-hidden // multiple_of)


def positions_after(start: int | torch.Tensor, length: int, device) -> torch.Tensor:
    """Absolute positions of `length` new tokens after `start` seen ones: `[T]` for an int `start`, `[B, T]`
    for per-sequence starts `[B]` (a batch of sequences of different lengths, see `HybridLM.generate`)."""
    steps = torch.arange(length, device=device)
    return steps + start if isinstance(start, int) else start[:, None] + steps


def rope_frequencies(dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """The `dim / 2` RoPE angular frequencies `theta^(-2i/dim)` (fp32), optionally rescaled for a longer context:
    `scaling` is None, `{"rope_type": "linear", "factor": f}` (every frequency divided by f: positions
    interpolated) or Llama 3's `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}`, which divides only the low frequencies (wavelengths longer than the
    original context / low_freq_factor) by `factor`, keeps the high ones (shorter than context / high_freq_factor),
    and blends linearly in the wavelength ratio between them. Other types are a ConfigError naming them."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor, context = float(scaling["factor"]), float(scaling["original_max_position_embeddings"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        ratio = context / (2 * math.pi / inv_freq)  # how many wavelengths fit in the original context
        blend = ((ratio - low) / (high - low)).clamp(0.0, 1.0)  # 0: low frequency (scaled), 1: high (kept)
        return blend * inv_freq + (1 - blend) * inv_freq / factor
    raise ConfigError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3): {scaling}")


def rotary(
    x: torch.Tensor, positions: torch.Tensor, theta: float, inv_freq: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate `x` `[B, T, H, D]` by RoPE angles of absolute `positions`, `[T]` (shared by every row) or `[B, T]`
    (one row of positions per sequence); rotate-half layout, fp32 math. `inv_freq` `[D/2]` replaces the plain
    frequencies of `theta` (a rescaled context: `rope_frequencies`)."""
    d = x.shape[-1]
    if inv_freq is None:
        inv_freq = rope_frequencies(d, theta)
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(x.device)  # ([B,] T, D/2)
    # ([B,] T, 1, D): broadcasts over the heads, and over the batch when positions are [T]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1).unsqueeze(-2)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1).unsqueeze(-2)
    xf = x.float()
    x1, x2 = xf[..., : d // 2], xf[..., d // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class ShortConvolution(nn.Module):
    """Causal depthwise convolution over time (width `kernel_size`), optionally followed by SiLU, as the
    short convs of Mamba-2, DeltaNet and Based. `forward(x, tail)` continues a sequence: `tail` holds the
    last `kernel_size - 1` inputs seen (None = start of sequence); the new tail is returned with `y`."""

    def __init__(self, dim: int, kernel_size: int = 4, activation: bool = True, bias: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # what nn.Conv1d does

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` `[B, T, D]` -> `(y [B, T, D], tail [B, kernel_size - 1, D])`."""
        B, T, D = x.shape
        if tail is None:
            tail = x.new_zeros(B, self.kernel_size - 1, D)
        xx = torch.cat([tail.to(x.dtype), x], dim=1)  # (B, T + w - 1, D)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if T <= 16:
            # decode: a weighted sum over the window. conv1d here costs milliseconds per call on CPU (oneDNN
            # sets up a primitive for a 4-wide input), more than the rest of the layer's decode step
            y = torch.einsum("btdk,dk->btd", xx.unfold(1, self.kernel_size, 1), self.weight[:, 0].to(x.dtype))
            y = y if bias is None else y + bias
        else:
            y = F.conv1d(xx.transpose(1, 2), self.weight.to(x.dtype), bias, groups=D).transpose(1, 2)
        # clone: a view of the tail would keep the whole (possibly very long) prefill input alive in the cache
        return (F.silu(y) if self.activation else y), xx[:, xx.shape[1] - (self.kernel_size - 1) :].clone()
