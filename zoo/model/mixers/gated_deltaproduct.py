"""Gated DeltaProduct (Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs via Householder
Products", arXiv:2502.10297).

Gated DeltaNet (`zoo/model/mixers/gated_deltanet.py`) taking `n = num_householder` delta steps per token: the
key, value and beta projections are n times wider, and token t's state transition is the product of n
generalized Householder matrices, a rank-n update (n = 1 is Gated DeltaNet):

    k_{t,j}, v_{t,j}, beta_{t,j}   j = 1..n       (ShortConv + SiLU on the n-wide k and v, L2-normalized keys)
    S <- exp(g_t) S;  S <- (I - beta_{t,j} k_{t,j} k_{t,j}^T) S + beta_{t,j} k_{t,j} v_{t,j}^T  for j = 1..n
    o_t = S^T (K^-1/2 q_t),   y_t = W_o (RMSNorm_head(o_t) * SiLU(W_g x_t))

With `allow_neg_eigval` beta is in (0, 2): each factor then has eigenvalues in (-1, 1), and products of two
such reflections are rotations, which is what tracking a permutation's state needs (Grazzi et al. 2024; the
paper's S3 / S5 results). The projections' n-wide outputs are read as fla lays them out, step-major within a
token (`(n h d)`), and the kernel takes steps `[B, T*n, H, *]` (`kernels.chunk_gated_delta_product`): DeltaNet's
input path and forward with `steps_per_token = n`. Grouped values (`num_v_heads`) are not supported. Defaults
live in `conf/mixer/gated_deltaproduct.yaml`.
"""

from __future__ import annotations

from torch import nn

from zoo.errors import ConfigError
from zoo.model.layers import ShortConvolution
from zoo.model.mixers import register
from zoo.model.mixers.gated_deltanet import GatedDeltaNet


@register("gated_deltaproduct")
class GatedDeltaProduct(GatedDeltaNet):
    kernel_family = "gated_delta_product"

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_heads: int | None,
        num_v_heads: int | None,
        num_householder: int,
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
        if isinstance(num_householder, bool) or not isinstance(num_householder, int) or num_householder < 1:
            raise ConfigError(f"layer {layer_idx}: num_householder must be a positive int, got {num_householder!r}")
        if num_v_heads is not None:
            raise ConfigError(f"layer {layer_idx}: gated_deltaproduct has no grouped values: num_v_heads must be null")
        options = dict(expand_k=expand_k, expand_v=expand_v, use_short_conv=use_short_conv, conv_size=conv_size)
        options |= dict(conv_bias=conv_bias, allow_neg_eigval=allow_neg_eigval, A_init_range=A_init_range)
        options |= dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor, norm_eps=norm_eps)
        options |= dict(chunk_size=chunk_size, torch_chunk_size=torch_chunk_size, backend=backend)
        super().__init__(
            d_model, layer_idx, n_layers=n_layers, head_dim=head_dim, num_heads=num_heads, num_v_heads=None, **options
        )
        n = self.steps_per_token = num_householder
        # k, v and beta: one set per Householder step (Gated DeltaNet's widths, n times)
        self.k_proj = nn.Linear(d_model, n * self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n * self.value_dim, bias=False)
        self.b_proj = nn.Linear(d_model, n * self.num_heads, bias=False)
        if use_short_conv:
            self.k_conv = ShortConvolution(n * self.key_dim, conv_size, activation=True, bias=conv_bias)
            self.v_conv = ShortConvolution(n * self.value_dim, conv_size, activation=True, bias=conv_bias)
