"""Multi-scale retention (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large
Language Models", arXiv:2307.08621).

Per head h, with a fixed decay `gamma_h = 1 - 2^(-5-h)` (h = 0 .. H-1) and RoPE on q and k at absolute
positions (the paper's xPos without its length extrapolation factor):

    S_t = gamma_h S_{t-1} + k_t^T v_t              o_t = scale q_t S_t,  scale = K^-0.5

which equals the parallel form `((q k^T) * scale * M) v`, `M[n, m] = gamma^(n - m)` for `n >= m`. The
layer is `W_o(GroupNorm_H(o) * swish(W_g x))`; the group norm is an RMSNorm per head with a learned scale
and no bias, as in fla's retnet (torchscale's MultiScaleRetention uses an RMSNorm per head without the
scale; the paper's GroupNorm is a LayerNorm per head). The paper's extra normalizations
(decay rows divided by the square root of their sum, score rows by max(|row sum|, 1)) are left out: each is
one scalar per head and token, which the group norm divides out again (up to its eps), as in fla.

Dims: key dim `d_model * expand_k` (default d), value dim and gate `d_model * expand_v` (default 2d), so the
mixer costs `8 d^2`; `num_heads` null = key dim / head_dim. `gamma` enters the kernels as the constant
log decay `g_gamma = log(gamma)` `[H]`, a buffer, not trained. Parallel form and prefill run
`kernels.chunk_simple_gla(g_gamma=...)`; one-token decode runs `kernels.fused_recurrent_simple_gla`. The
cache holds the fp32 state and the token offset (the absolute RoPE position of the next token; per row,
`[B]`, in a stack of sequences of different lengths).
Defaults in `conf/mixer/retnet.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.model.layers import RMSNorm, positions_after, rotary
from zoo.model.mixers import register
from zoo.model.mixers.base import Mixer, check_divides, split_heads


def retention_decay(num_heads: int) -> torch.Tensor:
    """`log(gamma_h)`, `gamma_h = 1 - 2^(-5-h)` for h = 0 .. num_heads-1: `[H]` fp32 (computed in fp64)."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-(2.0 ** (-5.0 - h))).float()


@dataclass
class RetentionCache:
    state: torch.Tensor | None = None  # (B, H, K, V), fp32
    # tokens seen so far = absolute RoPE position of the next token: an int, or LongTensor [B] once stacked
    offset: int | torch.Tensor = 0


@register("retnet")
class MultiScaleRetention(Mixer):
    kernel_family = "simple_gla"

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_heads: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        backend: str = "auto",
    ):
        super().__init__()
        self.layer_idx = layer_idx
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        # num_heads null: follow the model's head_dim on the key side
        self.num_heads, self.head_k, self.head_v = split_heads(
            "RetNet", layer_idx, key_dim, value_dim, num_heads, head_dim
        )
        check_divides("RoPE needs an even RetNet key size per head", self.head_k, 2, layer_idx)
        self.rope_theta = rope_theta
        self.chunk_size = chunk_size
        self.backend = backend
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # swish output gate
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps)  # group norm: one RMSNorm per head
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        # fixed, derived from the config: not trained and not saved in checkpoints
        self.register_buffer("g_gamma", retention_decay(self.num_heads), persistent=False)  # (H,)

    def forward(self, x: torch.Tensor, cache: RetentionCache | None = None):
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k, self.head_v
        start = 0 if cache is None else cache.offset
        positions = positions_after(start, T, x.device)  # (T,) or (B, T)
        q = rotary(self.q_proj(x).view(B, T, H, K), positions, self.rope_theta)
        k = rotary(self.k_proj(x).view(B, T, H, K), positions, self.rope_theta)
        v = self.v_proj(x).view(B, T, H, V)
        g_gamma = self.g_gamma.float()
        o = self.recurrence(q, k, v, cache=cache, g_gamma=g_gamma)
        if cache is not None:
            cache.offset = start + T
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V)), cache

    def init_cache(self) -> RetentionCache:
        return RetentionCache()

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        return 4 * batch_size * self.num_heads * self.head_k * self.head_v  # fp32 state, flat in seq_len
