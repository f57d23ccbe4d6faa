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
from zoo.model.mixers.base import LinearMixer, StateCache, check_divides


def retention_decay(num_heads: int) -> torch.Tensor:
    """`log(gamma_h)`, `gamma_h = 1 - 2^(-5-h)` for h = 0 .. num_heads-1: `[H]` fp32 (computed in fp64)."""
    h = torch.arange(num_heads, dtype=torch.float64)
    return torch.log1p(-(2.0 ** (-5.0 - h))).float()


@dataclass
class RetentionCache(StateCache):
    # state: (B, H, K, V), fp32. Tokens seen so far = absolute RoPE position of the next token: an int, or
    # LongTensor [B] once stacked
    offset: int | torch.Tensor = 0


@register("retnet")
class MultiScaleRetention(LinearMixer):
    kernel_family = "simple_gla"
    cache_class = RetentionCache

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_heads: int | None,
        expand_k: float,
        expand_v: float,
        rope_theta: float,
        norm_eps: float,
        chunk_size: int,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size)
        # num_heads null: follow the model's head_dim on the key side
        self.init_heads(d_model, int(d_model * expand_k), int(d_model * expand_v), num_heads, head_dim)
        check_divides("RoPE needs an even retnet key size per head", self.head_k, 2, layer_idx)
        self.rope_theta = rope_theta
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)  # swish output gate
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps)  # group norm: one RMSNorm per head
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)
        # fixed, derived from the config: not trained and not saved in checkpoints
        self.register_buffer("g_gamma", retention_decay(self.num_heads), persistent=False)  # (H,)

    def forward(self, x: torch.Tensor, cache: RetentionCache | None = None):
        B, T, _ = x.shape
        H, V = self.num_heads, self.head_v
        start = 0 if cache is None else cache.offset
        positions = positions_after(start, T, x.device)  # (T,) or (B, T)
        q, k, v = self.project_qkv(x)
        q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        o = self.recurrence(q, k, v, cache=cache, g_gamma=self.g_gamma.float())
        if cache is not None:
            cache.offset = start + T
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V)), cache
