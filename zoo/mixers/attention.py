"""Causal softmax attention with RoPE, grouped-query heads and an optional sliding window.

Uses `flash_attn` when it is installed and the tensors are fp16/bf16 on CUDA, and
`torch.nn.functional.scaled_dot_product_attention` otherwise. The cache keeps keys and values
(after RoPE); with a window it keeps only the last `window_size` of them, so a sliding-window
layer's memory stays flat in the sequence length.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import rotary
from zoo.mixers import register
from zoo.mixers.base import ConfigError, Mixer, check_divides


@dataclass
class KVCache:
    k: torch.Tensor | None = None  # (B, S, H_kv, D), S <= window_size when windowed
    v: torch.Tensor | None = None
    offset: int = 0  # tokens seen so far = absolute position of the next token


def reference_attention(q, k, v, q_start: int, window_size: int | None) -> torch.Tensor:
    """Plain masked softmax attention (fp32): the oracle for `attend`.

    q `[B, T, H, D]`, k/v `[B, S, H_kv, D]` whose last key sits at absolute position `q_start + T - 1`.
    """
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    k = k.float().repeat_interleave(H // Hkv, dim=2)
    v = v.float().repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k) * D**-0.5
    mask = _allowed(q_start, T, S, window_size, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).to(q.dtype)


def _allowed(q_start: int, T: int, S: int, window_size: int | None, device) -> torch.Tensor:
    """`[T, S]` bool: query at `q_start + t` may see the key at absolute position `q_start + T - S + s`."""
    q_pos = torch.arange(q_start, q_start + T, device=device)[:, None]
    k_pos = torch.arange(q_start + T - S, q_start + T, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window_size is not None:
        allowed &= k_pos > q_pos - window_size
    return allowed


def _flash_attn_usable(q: torch.Tensor) -> bool:
    return (
        q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and importlib.util.find_spec("flash_attn") is not None
    )


def attend(q, k, v, q_start: int, window_size: int | None) -> torch.Tensor:
    """Causal (optionally windowed) attention of new queries over all cached + new keys. Shapes as in
    `reference_attention`; returns `[B, T, H, D]`."""
    T, S = q.shape[1], k.shape[1]
    if _flash_attn_usable(q):
        from flash_attn import flash_attn_func

        # flash-attn aligns the causal mask to the bottom-right corner when T < S, which is exactly
        # "the last query is the last key"; window (w-1, 0) keeps the current token and w-1 before it.
        window = (-1, -1) if window_size is None else (window_size - 1, 0)
        return flash_attn_func(q, k, v, causal=True, window_size=window)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if window_size is None and T == S:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    else:
        mask = _allowed(q_start, T, S, window_size, q.device)
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)
    return o.transpose(1, 2)


@register("attn")
class Attention(Mixer):
    """Multi-head causal attention with RoPE and grouped-query heads (`num_kv_heads` < heads)."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        *,
        n_layers: int,
        head_dim: int,
        num_kv_heads: int | None = None,
        window_size: int | None = None,
        rope_theta: float = 10000.0,
        qkv_bias: bool = False,
    ):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.num_heads = check_divides("head_dim must divide d_model", d_model, head_dim, layer_idx)
        self.num_kv_heads = num_kv_heads or self.num_heads
        check_divides("num_kv_heads must divide the number of heads", self.num_heads, self.num_kv_heads, layer_idx)
        if window_size is not None and window_size < 1:
            raise ConfigError(f"layer {layer_idx}: window_size must be >= 1 or null, got {window_size}")
        self.window_size = window_size
        self.rope_theta = rope_theta
        self.q_proj = nn.Linear(d_model, self.num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, self.num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, self.num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * head_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        start = cache.offset if cache is not None else 0
        positions = torch.arange(start, start + T, device=x.device)
        q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        if cache is not None and cache.k is not None:
            k = torch.cat([cache.k, k], dim=1)
            v = torch.cat([cache.v, v], dim=1)
        o = attend(q, k, v, start, self.window_size)
        if cache is not None:
            keep = k.shape[1] if self.window_size is None else min(k.shape[1], self.window_size)
            cache.k, cache.v, cache.offset = k[:, -keep:], v[:, -keep:], start + T
        return self.o_proj(o.reshape(B, T, -1)), cache

    def kernel_backends(self) -> dict[str, str]:
        # On CUDA, training runs under bf16 autocast, so flash-attn serves it whenever it is installed.
        on_cuda = self.q_proj.weight.is_cuda
        flash = on_cuda and importlib.util.find_spec("flash_attn") is not None
        return {"attention": "flash_attn (fp16/bf16), sdpa (fp32)" if flash else "sdpa"}

    def init_cache(self) -> KVCache:
        return KVCache()

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        kept = seq_len if self.window_size is None else min(seq_len, self.window_size)
        elem = torch.empty((), dtype=self.param_dtype).element_size()
        return 2 * batch_size * kept * self.num_kv_heads * self.head_dim * elem
