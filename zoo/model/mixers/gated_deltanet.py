"""Gated DeltaNet (Yang, Kautz & Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule",
arXiv:2412.06464).

DeltaNet (`zoo/model/mixers/deltanet.py`: short convs + SiLU on q, k, v, L2-normalized q and k,
`beta = sigmoid(W_beta x)`) with a Mamba-2 style data-dependent scalar decay per head, and an output gate that is
always on:

    g_t = -exp(A_log) * softplus(W_a x_t + dt_bias)             (log-space decay per head, <= 0)
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T (K^-1/2 q_t)
    y_t = W_o (RMSNorm_head(o_t) * SiLU(W_g x_t))

Init as in the paper / fla: `A ~ U(0, 16)` (`A_log = log A`), `dt ~ logU(1e-3, 1e-1)` floored at 1e-4 and
`dt_bias = softplus^{-1}(dt)`; both are plain `nn.Parameter`s, so `HybridLM._init_weights` (which re-initializes
Linear layers) keeps them. Value heads are `expand_v` (default 2) times wider than key heads; key heads have
`model.head_dim` channels. Parallel form and prefill run `kernels.chunk_gated_delta_rule`, one-token decode
`kernels.fused_recurrent_gated_delta_rule`. Defaults live in `conf/mixer/gated_deltanet.yaml`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.mixers import register
from zoo.model.mixers.base import at_least_fp32, inverse_softplus_dt
from zoo.model.mixers.deltanet import DeltaNet


@register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    kernel_family = "gated_delta_rule"

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
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        norm_eps: float,
        chunk_size: int,
        torch_chunk_size: int | None,
        backend: str,
    ):
        lo, hi = A_init_range
        if not 0 <= lo < hi:
            raise ConfigError(f"layer {layer_idx}: A_init_range must satisfy 0 <= low < high, got {list(A_init_range)}")
        heads = {"num_heads": num_heads, "num_v_heads": num_v_heads, "expand_k": expand_k, "expand_v": expand_v}
        convs = {"use_short_conv": use_short_conv, "conv_size": conv_size, "conv_bias": conv_bias}
        options = {"allow_neg_eigval": allow_neg_eigval, "norm_eps": norm_eps, "chunk_size": chunk_size}
        options |= {"torch_chunk_size": torch_chunk_size, "backend": backend}
        # DeltaNet with its output gate always on
        super().__init__(
            d_model, layer_idx, n_layers=n_layers, head_dim=head_dim, use_gate=True, **heads, **convs, **options
        )
        H = self.num_v_heads  # a decay per value head
        self.a_proj = nn.Linear(d_model, H, bias=False)  # dt = softplus(W_a x + dt_bias)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(lo, hi).log())  # (H,)
        # softplus(dt_bias) = dt, (H,)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.name, layer_idx, H, dt_min, dt_max, dt_init_floor))

    def log_decay(self, x: torch.Tensor) -> torch.Tensor:
        """`g = -exp(A_log) * softplus(W_a x + dt_bias)`, `[B, T, Hv]` fp32 (fp64 for fp64 inputs), <= 0."""
        dt = F.softplus(at_least_fp32(self.a_proj(x)) + at_least_fp32(self.dt_bias))
        return -at_least_fp32(self.A_log).exp() * dt
