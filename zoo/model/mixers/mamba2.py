"""Mamba-2 / SSD (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", arXiv:2405.21060).

One in-projection gives `z` (gate, d_inner), `x` (d_inner), `B`, `C` (ngroups * d_state each) and `dt`
(one per head); a causal depthwise short convolution (width d_conv, SiLU) runs over `[x, B, C]`. Per head
h (head dim P = headdim, state N = d_state, group g(h) = h // (nheads / ngroups)):

    dt_t = softplus(dt_t + dt_bias)                  A = -exp(A_log)          (scalars per head)
    (dt_t clamped to `dt_limit` = [lo, hi] when set: Nemotron-H keeps dt >= its time_step_min)
    h_t  = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T      (h: N x P)
    y_t  = C_t h_t + D x_t
    out  = W_o RMSNorm_group(y * silu(z))            (`norm: gated`, mamba_ssm's norm_before_gate=False)
    (`norm: before_gate`: W_o (RMSNorm_group(y) * silu(z)); `norm: none`: W_o (y * silu(z)), Falcon-H1's default)

That is simple GLA with `q = C, k = B, v = x * dt, g = A * dt` and scale 1: the parallel form and prefill
run `kernels.chunk_simple_gla`, one-token decode `kernels.fused_recurrent_simple_gla` from the cached fp32
state `[B, H, N, P]`; the cache also keeps the short conv's last d_conv - 1 inputs. Inits follow the
reference `mamba_ssm` module: `A_log = log U(A_init_range)`, `softplus(dt_bias) ~ logU(dt_min, dt_max)`
(floored at dt_init_floor), `D = 1`, conv bias on. Defaults live in `conf/mixer/mamba2.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.layers import ShortConvolution
from zoo.model.mixers import register
from zoo.model.mixers.base import LinearMixer, StateCache, at_least_fp32, check_divides, inverse_softplus_dt


@dataclass
class Mamba2Cache(StateCache):
    # state: (B, H, N, P) fp32 SSM state
    conv: torch.Tensor | None = None  # (B, d_conv - 1, conv_dim) last inputs of the short conv over [x, B, C]


@register("mamba2")
class Mamba2(LinearMixer):
    kernel_family = "simple_gla"
    cache_class = Mamba2Cache
    NORMS = ("gated", "before_gate", "none")
    added_options = {"dt_limit": None, "norm": "gated"}  # configs from before them: dt never clamped, the gated norm

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        d_state: int,
        ngroups: int,
        d_conv: int,
        expand: float,
        headdim: int | None,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        A_init_range: tuple[float, float],
        conv_bias: bool,
        norm_eps: float,
        dt_limit: list | None,
        norm: str,
        chunk_size: int,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size)
        d_inner = expand * d_model
        if d_inner != int(d_inner) or d_inner < 1:
            raise ConfigError(f"layer {layer_idx}: mamba2 expand={expand} times d_model={d_model} is not a whole width")
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ConfigError(f"layer {layer_idx}: mamba2 A_init_range={list(A_init_range)} must satisfy 0 < lo <= hi")
        if d_conv < 1 or d_state < 1:
            raise ConfigError(f"layer {layer_idx}: mamba2 d_conv={d_conv} and d_state={d_state} must be >= 1")
        self.d_inner = d_inner = int(d_inner)
        self.headdim = headdim or head_dim
        what = "mamba2 headdim must divide d_inner = expand * d_model"
        self.nheads = check_divides(what, d_inner, self.headdim, layer_idx)
        check_divides("mamba2 ngroups must divide the number of heads", self.nheads, ngroups, layer_idx)
        self.ngroups, self.d_state, self.d_conv = ngroups, d_state, d_conv
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.norm_eps = norm_eps
        if norm not in self.NORMS:
            raise ConfigError(f"layer {layer_idx}: mamba2 norm={norm!r}; valid: {', '.join(self.NORMS)}")
        self.norm = norm
        if dt_limit is not None and (len(dt_limit) != 2 or dt_limit[0] is None):
            raise ConfigError(
                f"layer {layer_idx}: mamba2 dt_limit must be null or [lo, hi] (hi null: none), got {dt_limit}"
            )
        self.dt_limit = (
            None if dt_limit is None else (float(dt_limit[0]), None if dt_limit[1] is None else float(dt_limit[1]))
        )
        H = self.nheads
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + H, bias=False)  # z, x, B, C, dt
        self.conv = ShortConvolution(self.conv_dim, d_conv, activation=True, bias=conv_bias)
        # softplus(dt_bias) ~ logU(dt_min, dt_max), floored
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.name, layer_idx, H, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.empty(H).uniform_(lo, hi).log())  # A = -exp(A_log) in -[lo, hi]
        self.D = nn.Parameter(torch.ones(H))
        if norm != "none":
            self.norm_weight = nn.Parameter(torch.ones(d_inner))  # the RMSNorm's scale per channel
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.nheads, self.d_state, self.headdim)

    def forward(self, x: torch.Tensor, cache: Mamba2Cache | None = None):
        Bsz, T, _ = x.shape
        H, P, G, N = self.nheads, self.headdim, self.ngroups, self.d_state
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        xbc, tail = self.conv(xbc, None if cache is None else cache.conv)  # (B, T, conv_dim), SiLU applied
        xs, b, c = xbc.split([self.d_inner, G * N, G * N], dim=-1)
        xs = xs.view(Bsz, T, H, P)
        b = b.view(Bsz, T, G, N).repeat_interleave(H // G, dim=2)  # (B, T, H, N); head h reads group h // (H/G)
        c = c.view(Bsz, T, G, N).repeat_interleave(H // G, dim=2)
        dt = F.softplus(at_least_fp32(dt) + at_least_fp32(self.dt_bias))  # (B, T, H), fp32 math (fp64 in fp64 tests)
        if self.dt_limit is not None:
            dt = dt.clamp(*self.dt_limit)
        g = -torch.exp(at_least_fp32(self.A_log)) * dt  # log decay dt * A <= 0
        v = (xs * dt[..., None]).to(xs.dtype)
        if cache is not None:
            cache.conv = tail
        o = self.recurrence(c, b, v, g, cache=cache, scale=1.0)
        y = o + self.D.to(o.dtype)[:, None] * xs  # (B, T, H, P)
        y = self.gated_norm(y.reshape(Bsz, T, self.d_inner), z)
        return self.out_proj(y), cache

    def gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`y` `[B, T, d_inner]` gated by `silu(z)` and normed as `self.norm` says: `RMSNorm(y * silu(z)) * weight`,
        `RMSNorm(y) * weight * silu(z)` or no norm; the RMS taken per group of d_inner / ngroups channels (fp32)."""
        gate = F.silu(at_least_fp32(z))
        u = at_least_fp32(y)
        if self.norm == "none":
            return (u * gate).to(y.dtype)
        if self.norm == "gated":
            u = u * gate
        Bsz, T, _ = y.shape
        u = u.view(Bsz, T, self.ngroups, -1)
        u = (u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + self.norm_eps)).view(Bsz, T, self.d_inner)
        u = u * at_least_fp32(self.norm_weight)
        return (u if self.norm == "gated" else u * gate).to(y.dtype)

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        conv_tail = ((self.d_conv - 1, self.conv_dim), self.param_dtype)  # in the activations' dtype
        return [*super().cache_tensors(seq_len), conv_tail]
