"""RWKV-7 "Goose" (Peng et al. 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution", arXiv:2503.14456): the
time mix (mixer `rwkv7`) and its channel mix (MLP `rwkv7_cmix`), fla's `RWKV7Attention` and RWKV-LM's x070.

Time mix, per token (xx = x_{t-1} - x_t, the token shift; x_{-1} = 0 at a sequence start, else the cached token):

    x_□ = x_t + xx * mu_□,   □ in {r, w, k, v, a, g}                       (static mixes)
    r, k, v = W_r x_r, W_k x_k, W_v x_v                                   (heads of K)
    w = -exp(-1/2) * sigmoid(w0 + tanh(x_w W1) W2)                       (log decay per channel, in (-0.61, 0))
    a = sigmoid(a0 + (x_a A1) A2)                                         (in-context learning rate per channel)
    v = v + (v_first - v) * sigmoid(v0 + (x_v V1) V2)                    (value residual; not in the first layer)
    g = sigmoid(x_g G1) G2                                                (output gate)
    kk = normalize_head(k * k_k);   k = k * (1 + (a - 1) * k_a)
    S_t = (Diag(exp(w_t)) - kk (kk * a)^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T r_t      (kernels.chunk_rwkv7)
    y_t = W_o ((GroupNorm_H(o_t) + sum_head(r * k * r_k) v_t) * g)

The value residual is a cross-layer input: the first RWKV-7 layer of the model (layer 0 in a pure model) writes
its values as `v_first` into the forward call's carry (`Mixer.uses_carry`), and the later ones mix them in.
The carry holds the current tokens only, so the cache needs nothing for it. The recurrence is the DPLR delta rule
with `a = -kk`, `b = kk * a` (fla's convention), no query scale. Init after RWKV-LM x070 (`l = layer / (L - 1)`,
`l' = 1 - layer / L`, `c = channel / d`): `mu_r = 1 - c^(0.2 l')`, `mu_w = 1 - c^(0.9 l')`, `mu_k = 1 - c^(0.7 l')`,
`mu_v = 1 - c^(0.7 l')`, `mu_a = 1 - c^(0.9 l')`, `mu_g = 1 - c^(0.2 l')`; `w0[n] = -7 + 5 (n / (d - 1))^(0.85 +
sqrt(l)) + 0.5`; `a0 = 0`, `v0 = 1`; first LoRA matrices zero, second ones small uniform; `k_k = 0.85`, `k_a = 1`,
`r_k = -0.04`. All plain `nn.Parameter`s, so `HybridLM._init_weights` keeps them. Defaults: `conf/mixer/rwkv7.yaml`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.flops import MatmulFlops, matrix_flops
from zoo.model.mixers import register
from zoo.model.mixers.base import LinearMixer, at_least_fp32, check_divides
from zoo.model.mixers.rwkv6 import RWKVCache, ShiftCache, _ratios, token_shift
from zoo.model.mlps import register_mlp
from zoo.model.quant import activation_dtype

NORM_EPS = 64e-5  # RWKV-LM: GroupNorm eps = 1e-5 * head_size_divisor**2, head_size_divisor 8
MIXES = ("r", "w", "k", "v", "a", "g")
MIX_POWER = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}


def lora_rank(d_model: int, factor: float, power: float) -> int:
    """RWKV-7's low-rank widths: `factor * d^power`, rounded to a multiple of 32, at least 32."""
    return max(32, round(factor * d_model**power / 32) * 32)


@register("rwkv7")
class RWKV7TimeMix(LinearMixer):
    kernel_family = "rwkv7"
    chunk_form = "dplr"
    # on CPU without autograd the step loop is 2.7-3.3x faster than the chunked DPLR form (K = V = 64 / 128,
    # T = 1024, one thread; kernels/dplr_delta_rule/README.md)
    steps_for_inference = True
    cache_class = RWKVCache
    uses_carry = True  # reads (or, as the first RWKV-7 layer, writes) `v_first`

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        head_size: int | None,
        decay_lora_rank: int | None,
        a_lora_rank: int | None,
        v_lora_rank: int | None,
        gate_lora_rank: int | None,
        norm_eps: float,
        chunk_size: int,
        torch_chunk_size: int | None,
        backend: str,
    ):
        super().__init__(layer_idx, backend=backend, chunk_size=chunk_size, torch_chunk_size=torch_chunk_size)
        self.head_size = head_size or head_dim
        self.num_heads = check_divides("head_size must divide d_model", d_model, self.head_size, layer_idx)
        self.d_model, self.norm_eps = d_model, norm_eps
        ranks = {
            "w": decay_lora_rank or lora_rank(d_model, 1.8, 0.5),
            "a": a_lora_rank or lora_rank(d_model, 1.8, 0.5),
            "v": v_lora_rank or lora_rank(d_model, 1.3, 0.5),
            "g": gate_lora_rank or lora_rank(d_model, 0.6, 0.8),
        }
        if min(ranks.values()) < 1:
            raise ConfigError(f"layer {layer_idx}: rwkv7's low-rank widths must be >= 1, got {ranks}")
        ratio_0_to_1, ratio_1_to_almost0 = _ratios(layer_idx, n_layers)
        c = torch.arange(d_model, dtype=torch.float32) / d_model
        n = torch.arange(d_model, dtype=torch.float32) / max(d_model - 1, 1)
        self.mu = nn.ParameterDict({m: nn.Parameter(1.0 - c.pow(MIX_POWER[m] * ratio_1_to_almost0)) for m in MIXES})
        self.w0 = nn.Parameter(-7.0 + 5.0 * n.pow(0.85 + math.sqrt(ratio_0_to_1)) + 0.5)
        self.a0 = nn.Parameter(torch.zeros(d_model))
        self.v0 = nn.Parameter(torch.ones(d_model))

        def low_rank(rank: int) -> nn.ParameterList:  # (d, rank) zeros, (rank, d) small: starts at the bias alone
            return nn.ParameterList([torch.zeros(d_model, rank), torch.empty(rank, d_model).uniform_(-0.01, 0.01)])

        self.w_lora, self.a_lora, self.v_lora, self.g_lora = (low_rank(ranks[m]) for m in "wavg")
        self.k_k = nn.Parameter(torch.full((d_model,), 0.85))
        self.k_a = nn.Parameter(torch.ones(d_model))
        self.r_k = nn.Parameter(torch.full((self.num_heads, self.head_size), -0.04))
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, d_model, eps=norm_eps)

    def forward(self, x: torch.Tensor, cache: RWKVCache | None = None, carry: dict | None = None):
        B, T, C = x.shape
        H, K = self.num_heads, self.head_size
        xx = token_shift(x, None if cache is None else cache.shift)
        xr, xw, xk, xv, xa, xg = (x + xx * self.mu[m] for m in MIXES)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        w1, w2 = self.w_lora
        w = -math.exp(-0.5) * torch.sigmoid(at_least_fp32(self.w0 + torch.tanh(xw @ w1) @ w2))  # log decay (fp32)
        a = torch.sigmoid(self.a0 + (xa @ self.a_lora[0]) @ self.a_lora[1])
        carry = {} if carry is None else carry
        if "v_first" not in carry:  # the first RWKV-7 layer: its values are the later layers' residual
            carry["v_first"] = v
        else:
            v = v + (carry["v_first"] - v) * torch.sigmoid(self.v0 + (xv @ self.v_lora[0]) @ self.v_lora[1])
        g = torch.sigmoid(xg @ self.g_lora[0]) @ self.g_lora[1]
        kk = F.normalize((k * self.k_k).view(B, T, H, K), dim=-1)
        k = k * (1 + (a - 1) * self.k_a)
        a = a.view(B, T, H, K)
        r, k, v, w = r.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, K), w.view(B, T, H, K)
        o = self.recurrence(r, w, k, v, -kk, kk * a, cache=cache)  # (B, T, H, K), kernels.chunk_rwkv7's order
        if cache is not None:
            cache.shift = x[:, -1].clone()  # a copy: a view would keep the whole prefill input alive
        o = at_least_fp32(o.reshape(B * T, C))  # per-head LayerNorm in fp32
        o = F.group_norm(o, H, self.ln_x.weight.to(o.dtype), self.ln_x.bias.to(o.dtype), self.norm_eps)
        o = o.to(x.dtype).view(B, T, H, K) + ((r * k * self.r_k).sum(-1, keepdim=True) * v)  # the per-head bonus
        return self.output(o.reshape(B, T, C) * g), cache

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.num_heads, self.head_size, self.head_size)

    def flops_per_token(self, seq_len: int) -> float:
        """The linear layers and the recurrence, plus the four low-rank pairs (the value residual's counted in
        every layer, though the model's first RWKV-7 layer skips it)."""
        lora = (*self.w_lora, *self.a_lora, *self.v_lora, *self.g_lora)
        return super().flops_per_token(seq_len) + matrix_flops(*lora)

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [*super().cache_tensors(seq_len), ((self.d_model,), self.param_dtype)]  # + the previous token


@register_mlp("rwkv7_cmix")
class RWKV7ChannelMix(MatmulFlops, nn.Module):
    """RWKV-7's channel mix `W_v relu(W_k x_k)^2` (no receptance gate, unlike RWKV-5/6's), with a static token
    shift `x_k = x_t + (x_{t-1} - x_t) * mu_k`, `mu_k = 1 - c^(l'^4)` (x070). Hidden size `mlp_ratio * d_model`
    rounded down to a multiple of 32 (RWKV-7 uses 4), or `mlp_hidden`."""

    def __init__(self, d_model: int, layer_idx: int, *, n_layers: int, mlp_ratio: float, mlp_hidden: int | None):
        super().__init__()
        hidden = mlp_hidden or max(32, int(mlp_ratio * d_model) // 32 * 32)
        _, ratio_1_to_almost0 = _ratios(layer_idx, n_layers)
        c = torch.arange(d_model, dtype=torch.float32) / d_model
        self.mu_k = nn.Parameter(1.0 - c.pow(ratio_1_to_almost0**4))
        self.key = nn.Linear(d_model, hidden, bias=False)
        self.value = nn.Linear(hidden, d_model, bias=False)
        self.d_model = d_model

    def forward(self, x: torch.Tensor, cache: ShiftCache | None = None):
        xx = token_shift(x, None if cache is None else cache.shift)
        if cache is not None:
            cache.shift = x[:, -1].clone()
        return self.value(torch.relu(self.key(x + xx * self.mu_k)).square()), cache

    def init_cache(self) -> ShiftCache:
        return ShiftCache()

    def state_bytes(self, batch_size: int = 1) -> int:
        return batch_size * self.d_model * activation_dtype(self).itemsize  # the previous token (activations)
