"""Causal softmax attention with RoPE, grouped-query heads and an optional sliding window.

Uses `flash_attn` when it is installed and the tensors are fp16/bf16 on CUDA, and
`torch.nn.functional.scaled_dot_product_attention` otherwise. The cache keeps keys and values
(after RoPE); with a window it keeps only the last `window_size` of them, so a sliding-window
layer's memory stays flat in the sequence length.

A batch of sequences of different lengths (`HybridLM.generate` with an `attention_mask`) is prefilled one
sequence at a time and then stacked (`KVCache.stack`): each row's keys are right-aligned, the slots to their
left are padding that `key_mask` hides from every query, and `offset` holds each row's own position.
flash-attn takes no per-row key mask, so a masked cache always runs on SDPA with an explicit boolean mask.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import positions_after, rotary
from zoo.mixers import register
from zoo.mixers.base import ConfigError, Mixer, check_divides, per_sequence


@dataclass
class KVCache:
    k: torch.Tensor | None = None  # (B, S, H_kv, D), S <= window_size when windowed
    v: torch.Tensor | None = None
    # tokens seen so far = absolute position of the next token: an int, or LongTensor [B] per row once stacked
    offset: int | torch.Tensor = 0
    # (B, S) bool, False = a padding slot no query may attend; None = every slot holds a key
    key_mask: torch.Tensor | None = None

    @classmethod
    def stack(cls, caches: list[KVCache]) -> KVCache:
        """One batched cache from the caches of different sequences: keys left-padded to the longest row
        (each row's keys stay right-aligned, so the newest key of every row sits in the last slot)."""
        if any(c.k is None for c in caches):
            raise ValueError("cannot stack an empty KVCache: every sequence needs at least one token")
        S = max(c.k.shape[1] for c in caches)

        def left_pad(t: torch.Tensor, value=0.0) -> torch.Tensor:
            return F.pad(t, (0, 0) * (t.dim() - 2) + (S - t.shape[1], 0), value=value)

        def real(c: KVCache) -> torch.Tensor:
            return c.key_mask if c.key_mask is not None else c.k.new_ones(c.k.shape[:2], dtype=torch.bool)

        ragged = any(c.key_mask is not None or c.k.shape[1] != S for c in caches)
        return cls(
            k=torch.cat([left_pad(c.k) for c in caches]),
            v=torch.cat([left_pad(c.v) for c in caches]),
            offset=torch.cat([per_sequence(c.offset, c) for c in caches]),
            # without padding there is no mask, so that flash-attn can still serve the batch on CUDA
            key_mask=torch.cat([left_pad(real(c), False) for c in caches]) if ragged else None,
        )


def reference_attention(q, k, v, q_start: int, window_size: int | None, key_mask=None) -> torch.Tensor:
    """Plain masked softmax attention (fp32): the oracle for `attend`.

    q `[B, T, H, D]`, k/v `[B, S, H_kv, D]` whose last key sits at absolute position `q_start + T - 1`;
    `key_mask` `[B, S]` (optional) is False on padding slots that no query may see.
    """
    B, T, H, D = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    k = k.float().repeat_interleave(H // Hkv, dim=2)
    v = v.float().repeat_interleave(H // Hkv, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.float(), k) * D**-0.5
    mask = _allowed(q_start, T, S, window_size, q.device)
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]  # (B, 1, T, S)
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


def attend(q, k, v, q_start: int, window_size: int | None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal (optionally windowed) attention of new queries over all cached + new keys. Shapes as in
    `reference_attention`; returns `[B, T, H, D]`. Only the relative layout matters (the last query meets
    the last key), so `q_start` may be any row's start. Every query must see at least one real key (its own)."""
    T, S = q.shape[1], k.shape[1]
    if key_mask is None and _flash_attn_usable(q):  # flash-attn has no per-row key mask
        from flash_attn import flash_attn_func

        # flash-attn aligns the causal mask to the bottom-right corner when T < S, which is exactly
        # "the last query is the last key"; window (w-1, 0) keeps the current token and w-1 before it.
        window = (-1, -1) if window_size is None else (window_size - 1, 0)
        return flash_attn_func(q, k, v, causal=True, window_size=window)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if window_size is None and T == S and key_mask is None:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    else:
        mask = _allowed(q_start, T, S, window_size, q.device)
        if key_mask is not None:
            mask = mask & key_mask[:, None, None, :]  # (B, 1, T, S): padding slots are never attended
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
        start = cache.offset if cache is not None else 0  # int, or [B] per row in a stacked cache
        positions = positions_after(start, T, x.device)  # (T,) or (B, T)
        q, k = rotary(q, positions, self.rope_theta), rotary(k, positions, self.rope_theta)
        key_mask = None
        if cache is not None and cache.k is not None:
            k = torch.cat([cache.k, k], dim=1)
            v = torch.cat([cache.v, v], dim=1)
            if cache.key_mask is not None:
                key_mask = torch.cat([cache.key_mask, cache.key_mask.new_ones(B, T)], dim=1)
        o = attend(q, k, v, 0, self.window_size, key_mask)
        if cache is not None:
            # Keys are right-aligned per row, so the last `window_size` slots hold each row's last real keys
            # (the window counts real positions); padding slots that fall out of the window are dropped.
            keep = k.shape[1] if self.window_size is None else min(k.shape[1], self.window_size)
            cache.k, cache.v, cache.offset = k[:, -keep:], v[:, -keep:], start + T
            cache.key_mask = None if key_mask is None else key_mask[:, -keep:]
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
