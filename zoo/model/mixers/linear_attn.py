"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers
with Linear Attention", arXiv:2006.16236).

Softmax `exp(q . k)` is replaced by a kernel `phi(q) . phi(k)` with a positive feature map, so causal
attention becomes a recurrence over a `[K, V]` state per head (with `q, k <- phi(q), phi(k)`):

    S_t = S_{t-1} + k_t^T v_t                      o_t = scale q_t S_t
    z_t = z_{t-1} + k_t                            o_t <- o_t / (scale q_t . z_t + eps)   (normalize)

`phi` is `feature_map`: `elu` (`elu(x) + 1`, the paper's), `relu` or `identity`. The paper's denominator
(`normalize: true`) runs in the SAME kernel call: a ones column appended to v makes the state's last
column the running key sum `z_t`, so the state (and the cache) is `[K, V + 1]`. The default follows
fla's `linear_attn` instead: no denominator, and an RMSNorm per head on the output (`norm_output`), which
keeps the output scale bounded without the near-zero denominators that make the normalized form
unstable to train (Qin et al. 2022, "The Devil in Linear Transformer", arXiv:2210.10340). The layer is
`W_o(RMSNorm_head(o))` (or `W_o(o)` with `norm_output: false`); no output gate, as in the paper. The two
options are alternatives: the denominator is one non-negative scalar per head and token, which the RMSNorm
divides out again (up to its eps); the paper's layer is `normalize: true, norm_output: false`.

Heads: `num_heads` null = d_model / head_dim; key and value dims `d_model * expand_k`, `d_model *
expand_v` (default 1: per-head dims equal head_dim, the attention layer's shapes, so the mixer costs
`4 d^2` like attention). Runs `kernels.chunk_simple_gla(g=None)` (no decay); one-token decode runs
`kernels.fused_recurrent_simple_gla` from the cached fp32 state. Defaults in `conf/mixer/linear_attn.yaml`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.layers import RMSNorm
from zoo.model.mixers import register
from zoo.model.mixers.base import LinearMixer, StateCache, at_least_fp32


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0  # the paper's phi: positive, so the denominator is too


FEATURE_MAPS = {"identity": _identity, "elu": _elu_plus_one, "relu": F.relu}


@register("linear_attn")
class LinearAttention(LinearMixer):
    """Cache: a `StateCache` with `state` `[B, H, K, V]` fp32, `[B, H, K, V + 1]` with `normalize` (last column:
    the running key sum)."""

    kernel_family = "simple_gla"

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
        feature_map: str,
        normalize: bool,
        norm_output: bool,
        eps: float,
        norm_eps: float,
        chunk_size: int,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size)
        if feature_map not in FEATURE_MAPS:
            raise ConfigError(
                f"layer {layer_idx}: unknown linear_attn feature_map {feature_map!r}; valid: {', '.join(FEATURE_MAPS)}"
            )
        if normalize and feature_map == "identity":
            raise ConfigError(
                f"layer {layer_idx}: linear_attn normalize needs a non-negative feature_map (elu, relu), "
                "not identity: its denominator can cross zero"
            )
        self.init_heads(d_model, int(d_model * expand_k), int(d_model * expand_v), num_heads, head_dim)
        self.feature_map = feature_map
        self.phi = FEATURE_MAPS[feature_map]
        self.normalize = normalize
        self.eps = eps
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps) if norm_output else None
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_heads, self.head_k, self.head_v + int(self.normalize))  # + the running key sum

    def forward(self, x: torch.Tensor, cache: StateCache | None = None):
        B, T, _ = x.shape
        H, V = self.num_heads, self.head_v
        q, k, v = self.project_qkv(x)
        q, k = self.phi(q), self.phi(k)
        if self.normalize:  # state column V accumulates sum_i k_i, so o[..., V] = scale q_t . z_t
            v = torch.cat([v, v.new_ones(B, T, H, 1)], dim=-1)  # (B, T, H, V + 1)
        o = self.recurrence(q, k, v, cache=cache)
        if self.normalize:
            o = (at_least_fp32(o[..., :V]) / (at_least_fp32(o[..., V:]) + self.eps)).to(o.dtype)  # (B, T, H, V)
        if self.o_norm is not None:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(B, T, H * V)), cache
