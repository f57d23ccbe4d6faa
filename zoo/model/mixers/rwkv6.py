"""RWKV-6 "Finch" and RWKV-5 "Eagle" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States
and Dynamic Recurrence", arXiv:2404.05892): the time mix (mixer `rwkv6`) and the channel mix (MLP `rwkv_cmix`).

Time mix, per token (x_{-1} = 0 at the start of a sequence, else the cached previous token):

    xx   = x_{t-1} - x_t                                                (token shift)
    m_□  = tanh((x_t + xx * mu_x) A) B_□,  □ in {w, k, v, r, g}         (v6 only: LoRA rank 32; v5: m_□ = 0)
    x_□  = x_t + xx * (mu_□ + m_□)
    r, k, v = W_r x_r, W_k x_k, W_v x_v   (per head, head size K = V)
    w_t  = -exp(time_decay + tanh(x_w A_d) B_d)                          (v6: LoRA rank 64; v5: -exp(time_decay))
    o_t  = r_t (S_{t-1} + diag(u) k_t^T v_t),  S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t     (scale 1)
    y_t  = W_o(GroupNorm_H(o_t) * SiLU(W_g x_g))

v5 "Eagle" writes its shift as `mu x_t + (1 - mu) x_{t-1}`, i.e. `x_t + xx * (1 - mu)`: the same form with
`mu_□ := 1 - mu`, so both versions share the parameters `time_maa_□` (RWKV-LM's names) and their init.
The recurrence runs on `kernels.chunk_rwkv6` (parallel form, prefill) and `kernels.fused_recurrent_rwkv6`
(one-token decode). The cache holds the fp32 state `[B, H, K, V]` and the previous token `[B, d_model]`.

Channel mix (`rwkv_cmix`, registered in `zoo.model.mlps`): `sigmoid(W_r x_r) * W_v(relu(W_k x_k)^2)` with static
token-shift mixes `x_□ = x_t + xx * mu_□`; its cache is the previous token.

Init follows RWKV-LM (x060 / x052) with `l = layer / (L - 1)`, `l' = 1 - layer / L`, `c = channel / d`:
`time_decay[n] = -6 + 5 (n / (D - 1))^(0.7 + 1.3 l)`, `time_maa_□ = 1 - c^l'` (r, g: `1 - c^(l'/2)`;
v: `1 - (c^l' + 0.3 l)`), `u[n] = l (1 - n / (D - 1)) + 0.1 ((n + 1) mod 3 - 1)`, LoRA first matrices zero
and second matrices U(-0.01, 0.01). They are plain `nn.Parameter`s, so `HybridLM._init_weights` (which
re-initializes every `nn.Linear`) leaves them alone; the projections get the model's normal init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.flops import MatmulFlops, matrix_flops
from zoo.model.mixers import register
from zoo.model.mixers.base import LinearMixer, StateCache, at_least_fp32, check_divides
from zoo.model.mlps import register_mlp
from zoo.model.quant import activation_dtype

# RWKV-LM: GroupNorm(eps = 1e-5 * head_size_divisor**2) with head_size_divisor = 8. v6 normalizes o, v5
# normalizes o / 8, which is the same as normalizing o with eps * 64.
NORM_EPS = {6: 64e-5, 5: 64e-5 * 64}


@dataclass
class RWKVCache(StateCache):
    # state: (B, H, K, V), fp32
    shift: torch.Tensor | None = None  # (B, d_model): the previous token, for the token shift


@dataclass
class ShiftCache:
    shift: torch.Tensor | None = None  # (B, d_model): the previous token


def token_shift(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """`xx = x_{t-1} - x_t` for `x` `[B, T, C]`; `prev` `[B, C]` is x_{-1} (None = zeros, a new sequence)."""
    first = x.new_zeros(x.shape[0], 1, x.shape[2]) if prev is None else prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1) - x


def _ratios(layer_idx: int, n_layers: int) -> tuple[float, float]:
    """RWKV-LM's `ratio_0_to_1 = l / (L - 1)` and `ratio_1_to_almost0 = 1 - l / L`."""
    return layer_idx / max(n_layers - 1, 1), 1.0 - layer_idx / n_layers


@register("rwkv6")
class RWKV6TimeMix(LinearMixer):
    kernel_family = "rwkv6"
    cache_class = RWKVCache

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        version: int,
        head_size: int | None,
        mix_lora_rank: int,
        decay_lora_rank: int,
        norm_eps: float | None,
        chunk_size: int,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size)
        if version not in (5, 6):
            raise ConfigError(f"layer {layer_idx}: rwkv6 version must be 5 (Eagle) or 6 (Finch), got {version!r}")
        self.version = version
        self.head_size = head_size or head_dim
        self.num_heads = check_divides("head_size must divide d_model", d_model, self.head_size, layer_idx)
        self.d_model = d_model
        self.mix_lora_rank = mix_lora_rank
        self.norm_eps = NORM_EPS[version] if norm_eps is None else norm_eps
        D = d_model  # RWKV's dim_att = n_embd
        ratio_0_to_1, ratio_1_to_almost0 = _ratios(layer_idx, n_layers)
        c = torch.arange(d_model, dtype=torch.float32) / d_model
        n = torch.arange(D, dtype=torch.float32) / (D - 1)

        # token-shift mixes (RWKV-LM x060 names; for v5 `time_maa = 1 - time_mix`, the same values)
        self.time_maa_k = nn.Parameter(1.0 - c.pow(ratio_1_to_almost0))
        self.time_maa_v = nn.Parameter(1.0 - (c.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
        self.time_maa_r = nn.Parameter(1.0 - c.pow(0.5 * ratio_1_to_almost0))
        self.time_maa_g = nn.Parameter(1.0 - c.pow(0.5 * ratio_1_to_almost0))
        self.time_decay = nn.Parameter(-6.0 + 5.0 * n.pow(0.7 + 1.3 * ratio_0_to_1))  # (D,), log-log decay
        zigzag = 0.1 * ((torch.arange(D) + 1) % 3 - 1).float()
        self.time_faaaa = nn.Parameter((ratio_0_to_1 * (1.0 - n) + zigzag).view(self.num_heads, self.head_size))
        if version == 6:
            self.time_maa_x = nn.Parameter(1.0 - c.pow(ratio_1_to_almost0))
            self.time_maa_w = nn.Parameter(1.0 - c.pow(ratio_1_to_almost0))
            self.time_maa_w1 = nn.Parameter(torch.zeros(d_model, 5 * mix_lora_rank))
            self.time_maa_w2 = nn.Parameter(torch.empty(5, mix_lora_rank, d_model).uniform_(-0.01, 0.01))
            self.time_decay_w1 = nn.Parameter(torch.zeros(d_model, decay_lora_rank))
            self.time_decay_w2 = nn.Parameter(torch.empty(decay_lora_rank, D).uniform_(-0.01, 0.01))

        self.receptance = nn.Linear(d_model, D, bias=False)
        self.key = nn.Linear(d_model, D, bias=False)
        self.value = nn.Linear(d_model, D, bias=False)
        self.gate = nn.Linear(d_model, D, bias=False)
        self.output = nn.Linear(D, d_model, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, D, eps=self.norm_eps)  # LayerNorm per head, weight and bias

    def mix_inputs(self, x: torch.Tensor, xx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Token-shifted inputs `(x_w, x_k, x_v, x_r, x_g)` `[B, T, C]` (x_w is None for v5)."""
        if self.version == 5:
            return (None, *(x + xx * mu for mu in (self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)))
        B, T, C = x.shape
        lora = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1).view(B, T, 5, self.mix_lora_rank)
        m = torch.einsum("btfr,frc->fbtc", lora, self.time_maa_w2)  # (5, B, T, C): m_w, m_k, m_v, m_r, m_g
        mus = (self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g)
        return tuple(x + xx * (mu + m_i) for mu, m_i in zip(mus, m.unbind(0), strict=True))

    def log_decay(self, xw: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
        """`w = -exp(time_decay (+ tanh(x_w A_d) B_d))` `[B, T, H, K]`, in fp32 (or fp64)."""
        H, K = self.num_heads, self.head_size
        if self.version == 5:
            return -torch.exp(at_least_fp32(self.time_decay)).view(1, 1, H, K).expand(B, T, H, K)
        dd = torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        return -torch.exp(at_least_fp32(self.time_decay + dd)).view(B, T, H, K)

    def forward(self, x: torch.Tensor, cache: RWKVCache | None = None):
        B, T, C = x.shape
        H, K = self.num_heads, self.head_size
        xx = token_shift(x, None if cache is None else cache.shift)
        xw, xk, xv, xr, xg = self.mix_inputs(x, xx)
        r = self.receptance(xr).view(B, T, H, K)
        k = self.key(xk).view(B, T, H, K)
        v = self.value(xv).view(B, T, H, K)
        w = self.log_decay(xw, B, T)
        u = self.time_faaaa
        o = self.recurrence(r, k, v, w, u, cache=cache, scale=1.0)
        if cache is not None:
            cache.shift = x[:, -1].clone()  # a copy: a view would keep the whole prefill input alive
        o = at_least_fp32(o.reshape(B * T, C))  # per-head LayerNorm in fp32
        o = F.group_norm(o, H, self.ln_x.weight.to(o.dtype), self.ln_x.bias.to(o.dtype), self.norm_eps)
        o = o.to(x.dtype).view(B, T, C) * F.silu(self.gate(xg))
        return self.output(o), cache

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_heads, self.head_size, self.head_size)

    def flops_per_token(self, seq_len: int) -> float:
        """The linear layers and the recurrence, plus v6's low-rank token-shift mixes and decay."""
        if self.version == 5:
            return super().flops_per_token(seq_len)
        lora = (self.time_maa_w1, self.time_maa_w2, self.time_decay_w1, self.time_decay_w2)
        return super().flops_per_token(seq_len) + matrix_flops(*lora)

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [*super().cache_tensors(seq_len), ((self.d_model,), self.param_dtype)]  # + the previous token


@register_mlp("rwkv_cmix")
class RWKVChannelMix(MatmulFlops, nn.Module):
    """RWKV's channel mix `sigmoid(W_r x_r) * W_v(relu(W_k x_k)^2)` with a static token shift
    `x_□ = x_t + (x_{t-1} - x_t) * mu_□`. Hidden size `mlp_ratio * d_model`, rounded down to a multiple of
    32 as RWKV-LM does (RWKV-6 uses 3.5), or `mlp_hidden`."""

    def __init__(self, d_model: int, layer_idx: int, *, n_layers: int, mlp_ratio: float, mlp_hidden: int | None):
        super().__init__()
        hidden = mlp_hidden or max(32, int(mlp_ratio * d_model) // 32 * 32)
        self.d_model = d_model
        _, ratio_1_to_almost0 = _ratios(layer_idx, n_layers)
        c = torch.arange(d_model, dtype=torch.float32) / d_model
        self.time_maa_k = nn.Parameter(1.0 - c.pow(ratio_1_to_almost0))
        self.time_maa_r = nn.Parameter(1.0 - c.pow(ratio_1_to_almost0))
        self.key = nn.Linear(d_model, hidden, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: ShiftCache | None = None):
        """`x` `[B, T, d_model]` -> `(y [B, T, d_model], cache)`; a cache continues the token shift."""
        xx = token_shift(x, None if cache is None else cache.shift)
        xk = x + xx * self.time_maa_k
        xr = x + xx * self.time_maa_r
        if cache is not None:
            cache.shift = x[:, -1].clone()
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)).square()), cache

    def init_cache(self) -> ShiftCache:
        return ShiftCache()

    def state_bytes(self, batch_size: int = 1) -> int:
        return batch_size * self.d_model * activation_dtype(self).itemsize
