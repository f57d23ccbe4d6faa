"""DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
arXiv:2406.06484).

Per head, with `S` a K x V state, each token first erases what `S` recalls under its key and then writes its
value there (the delta rule):

    q_t, k_t, v_t = SiLU(ShortConv(W_q x)), SiLU(ShortConv(W_k x)), SiLU(ShortConv(W_v x))   (width 4, causal)
    q_t, k_t = q_t / ||q_t||, k_t / ||k_t||                     (L2 norm per head, here: the kernels do not)
    beta_t = sigmoid(W_beta x_t)                                (one write strength per head; times 2 with
                                                                 allow_neg_eigval: beta in (0, 2), so I - beta k k^T
                                                                 has eigenvalues in (-1, 1), Grazzi et al. 2024)
    S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    o_t = S_t^T (K^-1/2 q_t)
    y_t = W_o RMSNorm_head(o_t)              or, with use_gate,  W_o (RMSNorm_head(o_t) * SiLU(W_g x_t))

Without short convolutions (`use_short_conv: false`) q, k, v are `SiLU(W x)`, as in fla. Parallel form and
chunked prefill run `kernels.chunk_delta_rule`; one-token decode runs `kernels.fused_recurrent_delta_rule`. The
cache keeps the fp32 state `[B, H, K, V]` and the last `conv_size - 1` inputs of each of the three convs.

`num_v_heads` > the key heads (fla's grouped values, Qwen3-Next / Qwen3.5) shares each query / key head among
`num_v_heads / num_heads` value heads, each with its own beta, decay and state. `DeltaNet` is also the base of
Gated DeltaNet (`zoo/model/mixers/gated_deltanet.py`), which only adds a decay
(`log_decay`) and always gates the output. Defaults live in `conf/mixer/deltanet.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.model.layers import RMSNorm, ShortConvolution
from zoo.model.mixers import register
from zoo.model.mixers.base import QKV, LinearMixer, StateCache, at_least_fp32, check_divides, whole


@dataclass
class DeltaNetCache(StateCache):
    # state: (B, H, K, V), fp32
    q_tail: torch.Tensor | None = None  # (B, conv_size - 1, key_dim), None without short convs
    k_tail: torch.Tensor | None = None  # (B, conv_size - 1, key_dim)
    v_tail: torch.Tensor | None = None  # (B, conv_size - 1, value_dim)


def l2_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`x / sqrt(||x||^2 + eps)` over the last dim, in fp32 or wider (fla's l2norm)."""
    xf = at_least_fp32(x)
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@register("deltanet")
class DeltaNet(LinearMixer):
    kernel_family = "delta_rule"  # kernels family of the recurrence (Gated DeltaNet: "gated_delta_rule")
    chunk_form = "delta"  # the WY form's products (zoo.model.flops), for every subclass
    cache_class = DeltaNetCache
    # configs from before these options: their behaviour then
    added_options = {"num_v_heads": None, "allow_neg_eigval": False, "torch_chunk_size": None}
    steps_per_token = 1  # delta steps per token: k, v and beta hold that many per token (Gated DeltaProduct: n_h)

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
        use_gate: bool,
        allow_neg_eigval: bool,
        norm_eps: float,
        chunk_size: int,
        torch_chunk_size: int | None,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size, torch_chunk_size=torch_chunk_size)
        # num_heads null: heads of model.head_dim on the key side (fla's head_dim is the key head size).
        key_dim, value_dim = whole(d_model * expand_k), whole(d_model * expand_v)
        # grouped values (num_v_heads): value heads of their own, each group sharing a q / k head
        self.init_heads(d_model, key_dim, value_dim, num_heads, head_dim, value_heads=num_v_heads)
        if num_v_heads is not None:
            check_divides("num_heads must divide num_v_heads", num_v_heads, self.num_heads, layer_idx)
        self.num_v_heads = num_v_heads or self.num_heads
        self.use_short_conv = use_short_conv
        self.use_gate = use_gate
        self.allow_neg_eigval = allow_neg_eigval
        self.b_proj = nn.Linear(d_model, self.num_v_heads, bias=False)  # beta
        if use_short_conv:
            self.conv_size = conv_size
            self.q_conv = ShortConvolution(self.key_dim, conv_size, activation=True, bias=conv_bias)
            self.k_conv = ShortConvolution(self.key_dim, conv_size, activation=True, bias=conv_bias)
            self.v_conv = ShortConvolution(self.value_dim, conv_size, activation=True, bias=conv_bias)
        if use_gate:
            self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.o_norm = RMSNorm(self.head_v, eps=norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """Log-space decay `g [B, T, H]` (fp32 or fp64, <= 0); None: the plain delta rule."""
        return None

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_v_heads, self.head_k, self.head_v)

    def delta_inputs(self, x: torch.Tensor, cache: DeltaNetCache | None):
        """`q [B, T, Hv, K]`, `k [B, S, Hv, K]` (convolved, SiLU, L2-normalized, repeated for grouped values),
        `v [B, S, Hv, V]` and `beta [B, S, Hv]` (times 2 with allow_neg_eigval), S = T * steps_per_token (a token's
        steps step-major in the projections, fla's `(n h d)`); the conv tails go into `cache`."""
        B, T, _ = x.shape
        H, K, V, Hv = self.num_heads, self.head_k, self.head_v, self.num_v_heads
        S = T * self.steps_per_token
        q, k, v = self.project(x, QKV)
        if self.use_short_conv:  # SiLU is the convs' activation
            c = cache if cache is not None else DeltaNetCache()
            q, q_tail = self.q_conv(q, c.q_tail)
            k, k_tail = self.k_conv(k, c.k_tail)
            v, v_tail = self.v_conv(v, c.v_tail)
            if cache is not None:
                cache.q_tail, cache.k_tail, cache.v_tail = q_tail, k_tail, v_tail
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q = l2_norm(q.view(B, T, H, K))  # the kernels expect unit keys; they do not normalize
        k = l2_norm(k.reshape(B, S, H, K))
        if Hv != H:  # each q / k head serves Hv / H consecutive value heads
            q, k = q.repeat_interleave(Hv // H, dim=2), k.repeat_interleave(Hv // H, dim=2)
        beta = at_least_fp32(self.b_proj(x)).sigmoid().reshape(B, S, Hv)
        if self.allow_neg_eigval:
            beta = 2 * beta
        return q, k, v.reshape(B, S, Hv, V), beta

    def forward(self, x: torch.Tensor, cache: DeltaNetCache | None = None):
        B, T, _ = x.shape
        q, k, v, beta = self.delta_inputs(x, cache)
        g = self.log_decay(x)
        o = self.recurrence(*((q, k, v, beta) if g is None else (q, k, v, g, beta)), cache=cache)  # fla's order
        o = self.o_norm(o)  # (B, T, Hv, V)
        if self.use_gate:
            o = o * F.silu(self.g_proj(x).view(o.shape))
        return self.o_proj(o.reshape(B, T, -1)), cache

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        if not self.use_short_conv:
            return super().cache_tensors(seq_len)
        n = self.steps_per_token
        tails = [(self.conv_size - 1, dim) for dim in (self.key_dim, n * self.key_dim, n * self.value_dim)]
        return [*super().cache_tensors(seq_len), *((shape, self.param_dtype) for shape in tails)]  # activations
