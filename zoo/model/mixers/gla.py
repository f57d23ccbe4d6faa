"""Gated linear attention (Yang et al. 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training", arXiv:2312.06635).

Per head: `S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t`, `o_t = scale q_t S_t`, with a data-dependent
log-space gate `g_t = logsigmoid(W_2 W_1 x_t) / 16` from a low-rank (16) projection. The output
is `W_o(RMSNorm_head(o) * swish(W_g x))`. Defaults (key dim d/2, value dim d, 4 heads) live in
`conf/mixer/gla.yaml`. Parallel form and prefill run `kernels.chunk_gla`; one-token decode runs
the recurrent form `kernels.fused_recurrent_gla` from the cached `[B, H, K, V]` state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.model.layers import RMSNorm
from zoo.model.mixers import register
from zoo.model.mixers.base import LinearMixer, StateCache


@register("gla")
class GatedLinearAttention(LinearMixer):
    kernel_family = "gla"

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
        gate_low_rank_dim: int,
        gate_logit_normalizer: float,
        norm_eps: float,
        chunk_size: int,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size)
        # num_heads null: follow the model's head_dim on the value side, as attention does.
        self.init_heads(d_model, int(d_model * expand_k), int(d_model * expand_v), num_heads, head_dim, by="value")
        self.gate_logit_normalizer = gate_logit_normalizer
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)  # output gate
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank_dim, bias=False), nn.Linear(gate_low_rank_dim, self.key_dim, bias=True)
        )
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: StateCache | None = None):
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k, self.head_v
        q, k, v = self.project_qkv(x)
        g = F.logsigmoid(self.gk_proj(x).float()).view(B, T, H, K) / self.gate_logit_normalizer
        o = self.recurrence(q, k, v, g, cache=cache)
        o = self.o_norm(o) * F.silu(self.g_proj(x).view(B, T, H, V))
        return self.o_proj(o.reshape(B, T, H * V)), cache
