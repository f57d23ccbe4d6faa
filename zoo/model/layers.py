"""Building blocks shared by models and mixers: RMSNorm, SwiGLU, rotary embeddings, short convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate `x` `[B, T, H, D]` by RoPE angles of absolute `positions`, `[T]` (shared by every row) or `[B, T]`
    (one row of positions per sequence); rotate-half layout, fp32 math."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # (D/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # ([B,] T, D/2)
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
