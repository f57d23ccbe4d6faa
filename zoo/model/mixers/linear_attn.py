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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.layers import RMSNorm
from zoo.model.mixers import register
from zoo.model.mixers.base import Mixer, split_heads


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0  # the paper's phi: positive, so the denominator is too


FEATURE_MAPS = {"identity": _identity, "elu": _elu_plus_one, "relu": F.relu}


@dataclass
class LinearAttentionCache:
    state: torch.Tensor | None = None  # (B, H, K, V) fp32; (B, H, K, V + 1) with normalize: last column = sum k


@register("linear_attn")
class LinearAttention(Mixer):
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
        expand_v: float = 1.0,
        feature_map: str = "elu",
        normalize: bool = False,
        norm_output: bool = True,
        eps: float = 1e-6,
        norm_eps: float = 1e-5,
        chunk_size: int = 64,
        backend: str = "auto",
    ):
        super().__init__()
        if feature_map not in FEATURE_MAPS:
            raise ConfigError(
                f"layer {layer_idx}: unknown linear_attn feature_map {feature_map!r}; valid: {', '.join(FEATURE_MAPS)}"
            )
        if normalize and feature_map == "identity":
            raise ConfigError(
                f"layer {layer_idx}: linear_attn normalize needs a non-negative feature_map (elu, relu), "
                "not identity: its denominator can cross zero"
            )
        self.layer_idx = layer_idx
        key_dim, value_dim = int(d_model * expand_k), int(d_model * expand_v)
        self.num_heads, self.head_k, self.head_v = split_heads(
            "linear_attn", layer_idx, key_dim, value_dim, num_heads, head_dim
        )
        self.feature_map = feature_map
        self.phi = FEATURE_MAPS[feature_map]
        self.normalize = normalize
        self.eps = eps
        self.chunk_size = chunk_size
        self.backend = backend
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps) if norm_output else None
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: LinearAttentionCache | None = None):
        B, T, _ = x.shape
        H, K, V = self.num_heads, self.head_k, self.head_v
        q = self.phi(self.q_proj(x).view(B, T, H, K))
        k = self.phi(self.k_proj(x).view(B, T, H, K))
        v = self.v_proj(x).view(B, T, H, V)
        if self.normalize:  # state column V accumulates sum_i k_i, so o[..., V] = scale q_t . z_t
            v = torch.cat([v, v.new_ones(B, T, H, 1)], dim=-1)  # (B, T, H, V + 1)
        o = self.recurrence(q, k, v, cache=cache)
        if self.normalize:
            acc = torch.promote_types(o.dtype, torch.float32)
            o = (o[..., :V].to(acc) / (o[..., V:].to(acc) + self.eps)).to(o.dtype)  # (B, T, H, V)
        if self.o_norm is not None:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(B, T, H * V)), cache

    def init_cache(self) -> LinearAttentionCache:
        return LinearAttentionCache()

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        columns = self.head_v + int(self.normalize)  # + the running key sum
        return 4 * batch_size * self.num_heads * self.head_k * columns  # fp32 state, flat in seq_len
