"""Forgetting attention (FoX; Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate",
arXiv:2503.02130): causal softmax attention whose logits add, per head, the log forget gates of the tokens between
key and query, with no positional encoding (the gates give the order):

    f_t = logsigmoid(W_f x_t + b_f)                 (one gate per query head and token, <= 0; b_f starts at
                                                     forget_bias_init)
    o_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(D) + f_{j+1} + ... + f_i) v_j

Everything else is attention's (`zoo/model/mixers/attention.py`): grouped-query heads, a sliding window, and the
"Pro" block's parts as options: `qk_norm` (RMSNorm of q and k) and `output_gate` (the output times a sigmoid
gate, `o_proj(o * sigmoid(W_g x))`). The paper's Pro block also shifts keys and values by one token; that is
not built. Kernels: `kernels.parallel_forgetting_attn` (training, one-call prefill) and
`kernels.forgetting_attn_cached` (chunked prefill and decode). The cache (`ForgetCache`) is attention's KV cache
plus each kept key's cumulative gate (fp32), so that decode continues a sequence exactly. Defaults live in
`conf/mixer/fox.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from zoo.model.mixers import register
from zoo.model.mixers.attention import Attention, KVCache
from zoo.model.mixers.base import at_least_fp32
from zoo.model.quant import activation_device


@dataclass
class ForgetCache(KVCache):
    # (B, HQ, S) fp32 (fp64 for fp64): the running sum of the gates up to each kept key
    gc: torch.Tensor | None = None

    @classmethod
    def stack(cls, caches: list[KVCache]) -> KVCache:
        """Attention's stacking (keys right-aligned, padding on the left), the gates padded with +inf: a padding
        slot's logit `gc_q - inf` is -inf, so no query attends it, without a mask in the kernel."""
        stacked = super().stack(caches)
        S = stacked.k.shape[2]
        stacked.gc = torch.cat([F.pad(c.gc, (S - c.gc.shape[-1], 0), value=float("inf")) for c in caches])
        return stacked


@register("fox")
class ForgettingAttention(Attention):
    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_kv_heads: int | None,
        window_size: int | None,
        rope_theta: float | None,
        qkv_bias: bool,
        num_heads: int | None,
        head_size: int | None,
        qk_norm: str | None,
        norm_eps: float,
        rope_dim: int | None,
        rope_scaling: dict | None,
        out_bias: bool,
        output_gate: bool,
        forget_bias_init: float,
    ):
        options = dict(num_kv_heads=num_kv_heads, window_size=window_size, rope_theta=rope_theta, qkv_bias=qkv_bias)
        options |= dict(num_heads=num_heads, head_size=head_size, qk_norm=qk_norm, norm_eps=norm_eps)
        options |= dict(rope_dim=rope_dim, rope_scaling=rope_scaling, out_bias=out_bias, output_gate=output_gate)
        super().__init__(d_model, layer_idx, n_layers=n_layers, head_dim=head_dim, **options)
        self.f_proj = nn.Linear(d_model, self.num_heads, bias=False)  # one forget gate per query head
        # a plain Parameter, so that HybridLM._init_weights (which zeroes Linear biases) keeps its init; a large
        # bias starts the layer close to plain causal attention (gates near 0)
        self.f_bias = nn.Parameter(torch.full((self.num_heads,), float(forget_bias_init)))

    def forward(self, x: torch.Tensor, cache: ForgetCache | None = None):
        B, T, _ = x.shape
        q, k, v, gate, _ = self.heads(x, cache)  # (B, heads, T, D)
        g = F.logsigmoid(at_least_fp32(self.f_proj(x)) + at_least_fp32(self.f_bias))  # (B, T, HQ) <= 0, fp32+
        if cache is None:
            o = kernels.parallel_forgetting_attn(
                *(t.transpose(1, 2) for t in (q, k, v)), g, window_size=self.window_size
            )
        else:
            base = 0.0 if cache.gc is None else cache.gc[..., -1:]  # the running sum so far (B, HQ, 1)
            gc_new = base + g.transpose(1, 2).cumsum(-1)  # (B, HQ, T)
            # a cat per call, not the KV buffer's in-place append: one fp32 per key and head, 1/(2D) of the keys' copy
            gc_all = gc_new if cache.gc is None else torch.cat([cache.gc, gc_new], dim=-1)
            k, v, _ = cache.extend(k, v, self.window_size)  # padding slots (a stacked cache): +inf gates, never seen
            cache.gc = gc_all[..., -cache.k.shape[2] :]  # as many as the keys the cache keeps
            cache.offset = cache.offset + T
            qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))
            o = kernels.forgetting_attn_cached(
                qs, ks, vs, gc_new.transpose(1, 2), gc_all.transpose(1, 2), window_size=self.window_size
            )
        o = o.reshape(B, T, -1).to(x.dtype)
        if gate is not None:
            o = o * torch.sigmoid(gate)
        return self.o_proj(o), cache

    def kernel_backends(self) -> dict[str, str]:
        probe = torch.empty(0, device=activation_device(self))  # the ops run with backend="auto"
        return {"forgetting_attn": kernels.resolve_backend("auto", probe, family="forgetting_attn")}

    def init_cache(self) -> ForgetCache:
        return ForgetCache()

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        kept = seq_len if self.window_size is None else min(seq_len, self.window_size)
        return [*super().cache_tensors(seq_len), ((self.num_heads, kept), torch.float32)]  # k, v, gates
