"""Gated linear attention (Yang et al. 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635).

Per head: `S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`, with a data-dependent
log-space gate `g_t = logsigmoid(W_2 W_1 x_t) / 16` from a low-rank (16) projection. The output
is `W_o(RMSNorm_head(o) * swish(W_g x))`. Defaults (key dim d/2, value dim d, 4 heads) live in
`conf/mixer/gla.yaml`. Parallel form and prefill run `kernels.chunk_gla`; one-token decode runs
the recurrent form `kernels.fused_recurrent_gla` from the cached `[B, H, K, V]` state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.model.layers import RMSNorm
from zoo.model.mixers import register
from zoo.model.mixers.base import Mixer, split_heads


@dataclass
class RecurrentCache:
    state: torch.Tensor | None = None  # (B, H, K, V), fp32


@register("gla")
class GatedLinearAttention(Mixer):
    kernel_family = "gla"

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_heads: int | None = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        backend: str = "auto",
    ):
        super().__init__()
        self.layer_idx = layer_idx
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        # num_heads null: follow the model's head_dim on the value side, as attention does.
        self.num_heads, self.head_k, self.head_v = split_heads(
            "GLA", layer_idx, key_dim, value_dim, num_heads, head_dim, by="value"
        )
        self.gate_logit_normalizer = gate_logit_normalizer
        self.chunk_size = chunk_size
        self.backend = backend
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.g_proj = nn.Linear(d_model, value_dim, bias=False)  # output gate
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, key_dim, bias=True)
        )
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: RecurrentCache | None = None):
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k, self.head_v
        q = self.q_proj(x).view(B, T, H, K)
        k = self.k_proj(x).view(B, T, H, K)
        v = self.v_proj(x).view(B, T, H, V)
        g = F.logsigmoid(self.gk_proj(x).float()).view(B, T, H, K) / self.gate_logit_normalizer
        o = self.recurrence(q, k, v, g, cache=cache)
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V)), cache

    def init_cache(self) -> RecurrentCache:
        return RecurrentCache()

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        return 4 * batch_size * self.num_heads * self.head_k * self.head_v  # fp32 state, flat in seq_len
