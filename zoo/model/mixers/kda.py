"""Kimi Delta Attention (Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention Architecture",
arXiv:2510.26692), fla's `KimiDeltaAttention` layer.

DeltaNet's layer (`zoo/model/mixers/deltanet.py`: short convs + SiLU on q, k, v, L2-normalized q and k,
`beta = sigmoid(W_beta x)`) with a decay per key channel from a low-rank projection, and a low-rank sigmoid
output gate:

    g_t = -exp(A_log[h]) * softplus(W_f2 W_f1 x_t + dt_bias)        (log decay per head and key channel, <= 0)
    S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (K^-1/2 q_t)
    y_t = W_o (RMSNorm_head(o_t) * sigmoid(W_g2 W_g1 x_t + b_g))

The low-rank projections have the value head width as rank (fla's). Init as fla: `A ~ U(1, 16)` per head
(`A_log = log A`), `dt_bias = 0`; both plain `nn.Parameter`s, kept by `HybridLM._init_weights`. Parallel form
and prefill run `kernels.chunk_kda`, one-token decode `kernels.fused_recurrent_kda`. With `allow_neg_eigval`
beta is in (0, 2). Defaults live in `conf/mixer/kda.yaml`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.mixers import register
from zoo.model.mixers.base import at_least_fp32
from zoo.model.mixers.deltanet import DeltaNet, DeltaNetCache


@register("kda")
class KimiDeltaAttention(DeltaNet):
    kernel_family = "kda"
    # on CPU without autograd the step loop is 1.8-3.8x faster than the chunked form (K = V = 64 / 128, T = 1024,
    # one thread; kernels/kda/README.md)
    steps_for_inference = True

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_heads: int | None,
        num_v_heads: int | None,
        expand_k: float,
        expand_v: float,
        use_short_conv: bool,
        conv_size: int,
        conv_bias: bool,
        allow_neg_eigval: bool,
        A_init_range: tuple[float, float],
        norm_eps: float,
        chunk_size: int,
        torch_chunk_size: int | None,
        backend: str,
    ):
        lo, hi = A_init_range
        if not 0 < lo < hi:
            raise ConfigError(f"layer {layer_idx}: A_init_range must satisfy 0 < low < high, got {list(A_init_range)}")
        heads = {"num_heads": num_heads, "num_v_heads": num_v_heads, "expand_k": expand_k, "expand_v": expand_v}
        convs = {"use_short_conv": use_short_conv, "conv_size": conv_size, "conv_bias": conv_bias}
        options = {"allow_neg_eigval": allow_neg_eigval, "norm_eps": norm_eps, "chunk_size": chunk_size}
        options |= {"torch_chunk_size": torch_chunk_size, "backend": backend, "use_gate": False}  # KDA's own gate below
        super().__init__(d_model, layer_idx, n_layers=n_layers, head_dim=head_dim, **heads, **convs, **options)
        Hv, rank = self.num_v_heads, self.head_v
        # the decay: per value head (each group of grouped values decays on its own) and key channel
        self.f_proj = nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, Hv * self.head_k, bias=False))
        self.A_log = nn.Parameter(torch.empty(Hv).uniform_(lo, hi).log())  # (Hv,)
        self.dt_bias = nn.Parameter(torch.zeros(Hv * self.head_k))  # (Hv * K,)
        self.g_proj = nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, self.value_dim, bias=True))

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """`g [B, T, Hv, K]` (fp32, or fp64 for fp64 inputs), <= 0."""
        B, T, _ = x.shape
        dt = F.softplus(at_least_fp32(self.f_proj(x)) + at_least_fp32(self.dt_bias)).view(B, T, self.num_v_heads, -1)
        return -at_least_fp32(self.A_log).exp()[:, None] * dt

    def forward(self, x: torch.Tensor, cache: DeltaNetCache | None = None):
        B, T, _ = x.shape
        q, k, v, beta = self.delta_inputs(x, cache)
        o = self.recurrence(q, k, v, self.log_decay(x), beta, cache=cache)  # (B, T, Hv, V), fla's order
        o = self.o_norm(o) * torch.sigmoid(self.g_proj(x)).view(o.shape)
        return self.o_proj(o.reshape(B, T, -1)), cache
