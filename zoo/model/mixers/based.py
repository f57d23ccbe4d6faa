"""Based linear attention (Arora et al. 2024, "Simple linear attention language models balance the
recall-throughput tradeoff", arXiv:2402.18668).

Per head, q and k are projected to a small feature dim d' (16) and lifted by the 2nd-order Taylor
feature map of `exp(q.k / sqrt(d'))`:

    phi(x) = [1, x / d'^{1/4}, (x x^T) / (sqrt(2) sqrt(d'))]
    phi(q).phi(k) = 1 + q.k / sqrt(d') + (q.k)^2 / (2 d')

`x x^T` is symmetric, so by default only its d'(d'+1)/2 upper-triangular products are kept, the
off-diagonal ones weighted by sqrt(2): the dot product is the same polynomial with
E = 1 + d' + d'(d'+1)/2 features (153 for d' = 16) instead of 1 + d' + d'^2 (273, the released code's
full outer product; `upper_triangular: false`). The output is normalized linear attention with
v of head dim d_v = d_model / num_heads:

    S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t)
    o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps),   y_t = W_o o_t

`1 + a + a^2/2 >= 1/2` for every real a, so the denominator is at least t/2: eps only guards round-off.
Numerator and denominator come from ONE simple-GLA call (no gate, scale 1: the feature map carries the
scaling) on `v' = [v, 1]`: the state is `[E, d_v + 1]` per head, `[S | z]`, fp32 in the cache. The
Triton backend tiles K and V with masks, so E = 153 (not a power of two) needs no padding.

Parallel form and prefill run `kernels.chunk_simple_gla`; one-token decode runs
`kernels.fused_recurrent_simple_gla` from the cached state. Defaults live in `conf/mixer/based.yaml`.
The released Based models interleave these layers with sliding-window attention (and gated short
convolutions): see `conf/model/based.yaml`.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.errors import ConfigError
from zoo.model.mixers import register
from zoo.model.mixers.base import QKV, LinearMixer, StateCache, check_divides


class TaylorFeatureMap(nn.Module):
    """`phi(x) = [1, x / d'^{1/4}, (x x^T) / (sqrt(2) sqrt(d'))]` over the last dim: `[..., d'] -> [..., E]`.

    With `upper_triangular`, only the products `x_i x_j` with `i <= j` are kept, the off-diagonal ones
    weighted by sqrt(2), so that `phi(q).phi(k)` is unchanged and E = 1 + d' + d'(d'+1)/2."""

    def __init__(self, feature_dim: int, upper_triangular: bool = True):
        super().__init__()
        d = feature_dim
        if upper_triangular:
            i, j = torch.triu_indices(d, d)
        else:
            i, j = torch.arange(d).repeat_interleave(d), torch.arange(d).repeat(d)
        self.register_buffer("i", i, persistent=False)
        self.register_buffer("j", j, persistent=False)
        self.feature_dim = d
        self.expanded_dim = 1 + d + len(i)
        # weights of x_i x_j: 1 / (sqrt(2) sqrt(d')), times sqrt(2) off the diagonal of the upper triangle
        self.diag_weight = 1 / (2**0.5 * d**0.5)
        self.off_weight = self.diag_weight * (2**0.5 if upper_triangular else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.full(self.i.shape, self.off_weight, dtype=x.dtype, device=x.device)  # in x's precision
        weight = weight.masked_fill(self.i == self.j, self.diag_weight)
        x2 = x[..., self.i] * x[..., self.j] * weight
        return torch.cat([torch.ones_like(x[..., :1]), x * self.feature_dim**-0.25, x2], dim=-1)


@register("based")
class BasedLinearAttention(LinearMixer):
    """Cache: a `StateCache` with `state` `[B, H, E, d_v + 1]` fp32, `[S | z]`."""

    kernel_family = "simple_gla"

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_heads: int | None,
        feature_dim: int,
        upper_triangular: bool,
        eps: float,
        chunk_size: int,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size)
        if feature_dim < 1:
            raise ConfigError(f"layer {layer_idx}: based feature_dim must be >= 1, got {feature_dim}")
        # num_heads null: follow the model's head_dim on the value side, as attention does.
        self.num_heads = num_heads or check_divides("head_dim must divide d_model", d_model, head_dim, layer_idx)
        what = "num_heads must divide d_model (the Based value dim)"
        self.head_v = check_divides(what, d_model, self.num_heads, layer_idx)
        self.feature_dim = feature_dim
        self.eps = eps
        self.feature_map = TaylorFeatureMap(feature_dim, upper_triangular)
        self.q_proj = nn.Linear(d_model, self.num_heads * feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.num_heads * feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.fusable = (QKV,)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    @property
    def expanded_dim(self) -> int:
        """E: features per head after the Taylor map."""
        return self.feature_map.expanded_dim

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_heads, self.expanded_dim, self.head_v + 1)  # [S | z]: H * (d_v * E + E) elements

    def forward(self, x: torch.Tensor, cache: StateCache | None = None):
        B, T, _ = x.shape
        H, F, V = self.num_heads, self.feature_dim, self.head_v
        q, k, v = self.project(x, QKV)
        q = self.feature_map(q.view(B, T, H, F))  # (B, T, H, E)
        k = self.feature_map(k.view(B, T, H, F))
        v = v.view(B, T, H, V)
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, T, H, V + 1): last column sums phi(k)
        o = self.recurrence(q, k, v, cache=cache, scale=1.0)
        o = o[..., :V] / (o[..., V:] + self.eps)  # phi(q)^T S / (phi(q)^T z + eps)
        return self.o_proj(o.reshape(B, T, H * V)), cache
