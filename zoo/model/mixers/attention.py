"""Causal softmax attention with RoPE, grouped-query heads and an optional sliding window; the options that
published checkpoints use on top (Qwen3's per-head QK norm, partial and rescaled RoPE, projection biases, heads
wider than d_model / num_heads) are config like the rest.

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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model.flops import mean_causal_keys
from zoo.model.layers import RMSNorm, positions_after, rope_frequencies, rotary
from zoo.model.mixers import register
from zoo.model.mixers.base import QKV, Mixer, check_divides, per_sequence, split_heads
from zoo.model.quant import activation_device


@dataclass
class KVCache:
    # (B, H_kv, S, D), S <= window_size when windowed. Head-first: one decode query then reads each head's keys
    # contiguously, which halves the time of a decode step's attention over 8k keys on CPU (vs B, S, H, D)
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    # tokens seen so far = absolute position of the next token: an int, or LongTensor [B] per row once stacked
    offset: int | torch.Tensor = 0
    # (B, S) bool, False = a padding slot no query may attend; None = every slot holds a key
    key_mask: torch.Tensor | None = None
    # tokens to make room for when the buffer is first allocated (`HybridLM.prefill(max_length=...)`)
    reserve: int = 0
    # `k`/`v`/`key_mask` are views into this buffer, which has spare room after them (not part of the state)
    _buf: _KVBuffer | None = field(default=None, repr=False, compare=False)

    def extend(self, k: torch.Tensor, v: torch.Tensor, window_size: int | None):
        """Append `T` new keys/values `[B, H_kv, T, D]`; return `(k, v, key_mask)` over every cached + new slot,
        for the new queries to attend, and keep the last `window_size` of them (all without a window).

        Without autograd the keys are written in place into a preallocated buffer: growing by `torch.cat`
        copied the whole cache on every decoded token, which made a long-context decode step cost a copy of
        every layer's KV cache. The buffer grows by 1.5x (or to `reserve`), and a windowed cache slides
        through a buffer of twice its window, so each token costs O(1) amortized copying."""
        B, T = k.shape[0], k.shape[2]
        new_mask = None if self.key_mask is None else self.key_mask.new_ones(B, T)
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # writing in place would invalidate the keys autograd saved from the previous call
            k_all = k if self.k is None else torch.cat([self.k, k], dim=2)
            v_all = v if self.v is None else torch.cat([self.v, v], dim=2)
            mask_all = None if new_mask is None else torch.cat([self.key_mask, new_mask], dim=1)
            self._buf = None
        else:
            n = 0 if self.k is None else self.k.shape[2]
            if self._buf is None or not self._buf.holds(self, T):
                self._buf = _KVBuffer(self, k, v, self._capacity(n + T, window_size))
            k_all, v_all, mask_all = self._buf.append(n, k, v, new_mask)
        keep = k_all.shape[2] if window_size is None else min(k_all.shape[2], window_size)
        self.k, self.v = k_all[:, :, -keep:], v_all[:, :, -keep:]
        self.key_mask = None if mask_all is None else mask_all[:, -keep:]
        return k_all, v_all, mask_all

    def _capacity(self, need: int, window_size: int | None) -> int:
        if window_size is not None:  # room to slide another window (or chunk) before the keys are moved
            capacity = need + max(window_size, 16)
            return min(capacity, max(need, self.reserve)) if self.reserve else capacity
        return self.reserve if self.reserve >= need else need + need // 2 + 16

    @classmethod
    def stack(cls, caches: list[KVCache]) -> KVCache:
        """One batched cache from the caches of different sequences: keys left-padded to the longest row
        (each row's keys stay right-aligned, so the newest key of every row sits in the last slot)."""
        if any(c.k is None for c in caches):
            raise ValueError("cannot stack an empty KVCache: every sequence needs at least one token")
        S = max(c.k.shape[2] for c in caches)

        def left_pad(t: torch.Tensor) -> torch.Tensor:  # (B, H, n, D) -> (B, H, S, D)
            return F.pad(t, (0, 0, S - t.shape[2], 0))

        def real(c: KVCache) -> torch.Tensor:  # (B, S) mask, False on the left padding
            mask = c.key_mask if c.key_mask is not None else c.k.new_ones(c.k.shape[0], c.k.shape[2], dtype=torch.bool)
            return F.pad(mask, (S - mask.shape[1], 0), value=False)

        ragged = any(c.key_mask is not None or c.k.shape[2] != S for c in caches)
        return cls(
            k=torch.cat([left_pad(c.k) for c in caches]),
            v=torch.cat([left_pad(c.v) for c in caches]),
            offset=torch.cat([per_sequence(c.offset, c) for c in caches]),
            # without padding there is no mask, so that flash-attn can still serve the batch on CUDA
            key_mask=torch.cat([real(c) for c in caches]) if ragged else None,
            # the longest row sets the slots: its reserve covers the batch
            reserve=max(c.reserve + S - c.k.shape[2] for c in caches),
        )


class _KVBuffer:
    """Keys, values (and key mask) of one KVCache with spare room after them; `end` is the first free slot. A
    cache appends in place only when its keys end exactly there: a shallow copy of a cache that another copy
    has already extended gets a fresh buffer instead of overwriting its sibling's keys."""

    def __init__(self, cache: KVCache, k: torch.Tensor, v: torch.Tensor, capacity: int):
        B, H, _, D = k.shape
        self.k = k.new_empty(B, H, capacity, D)
        self.v = v.new_empty(B, H, capacity, v.shape[3])
        self.key_mask = None if cache.key_mask is None else cache.key_mask.new_empty(B, capacity)
        self.end = 0 if cache.k is None else cache.k.shape[2]
        if cache.k is not None:
            self.k[:, :, : self.end], self.v[:, :, : self.end] = cache.k, cache.v
            if cache.key_mask is not None:
                self.key_mask[:, : self.end] = cache.key_mask

    def holds(self, cache: KVCache, T: int) -> bool:
        """Whether `cache`'s keys are this buffer's last written slots, with room for `T` more."""
        n = 0 if cache.k is None else cache.k.shape[2]
        return (
            0 < n <= self.end
            and self.end + T <= self.k.shape[2]
            and cache.k.shape[0] == self.k.shape[0]
            and cache.k.data_ptr() == self.k[:, :, self.end - n].data_ptr()
            and (cache.key_mask is None) == (self.key_mask is None)
        )

    def append(self, n: int, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None):
        """Write `T` new slots after the `n` held ones; return views of all `n + T`."""
        start, end = self.end - n, self.end + k.shape[2]
        self.k[:, :, self.end : end], self.v[:, :, self.end : end] = k, v
        if key_mask is not None:
            self.key_mask[:, self.end : end] = key_mask
        self.end = end
        mask = None if key_mask is None else self.key_mask[:, start:end]
        return self.k[:, :, start:end], self.v[:, :, start:end], mask


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


def attend(
    q, k, v, q_start: int, window_size: int | None, key_mask: torch.Tensor | None = None, heads_first: bool = False
) -> torch.Tensor:
    """Causal (optionally windowed) attention of new queries over all cached + new keys. Shapes as in
    `reference_attention` (`heads_first`: q/k/v and the output `[B, H, T, D]`, the KV cache's layout); returns
    the output in the layout of `q`. Only the relative layout matters (the last query meets the last key), so
    `q_start` may be any row's start. Every query must see at least one real key (its own)."""
    qh, kh, vh = (t if heads_first else t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    T, S = qh.shape[2], kh.shape[2]
    if key_mask is None and _flash_attn_usable(q):  # flash-attn has no per-row key mask
        from flash_attn import flash_attn_func

        # flash-attn aligns the causal mask to the bottom-right corner when T < S, which is exactly
        # "the last query is the last key"; window (w-1, 0) keeps the current token and w-1 before it.
        window = (-1, -1) if window_size is None else (window_size - 1, 0)
        o = flash_attn_func(*(t.transpose(1, 2) for t in (qh, kh, vh)), causal=True, window_size=window)
        return o.transpose(1, 2) if heads_first else o
    if window_size is None and T == S and key_mask is None:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    elif T == 1 and key_mask is None:  # decode: one query sees every key of its window, so no mask is needed
        w = S if window_size is None else min(S, window_size)
        if qh.dtype == torch.bfloat16:
            # SDPA's bf16 kernel: one query over 8k keys took 0.85 ms per d768 layer on an AVX-512 BF16 CPU,
            # against 9.6 ms for the matmuls below in bf16 (torch 2.13, one run)
            o = F.scaled_dot_product_attention(qh, kh[:, :, -w:], vh[:, :, -w:], enable_gqa=True)
        else:
            o = _one_query_attention(qh, kh[:, :, -w:], vh[:, :, -w:])
    else:
        mask = _allowed(q_start, T, S, window_size, q.device)
        if key_mask is not None:
            mask = mask & key_mask[:, None, None, :]  # (B, 1, T, S): padding slots are never attended
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=True)
    return o if heads_first else o.transpose(1, 2)


def _one_query_attention(qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """One query per row (`[B, H, 1, D]`) over every key (`[B, H_kv, S, D]`). The query heads of a group share
    their keys as rows of one matmul, where SDPA would repeat the keys per head; on CPU this takes about 20%
    less time than SDPA for one query over 8k keys (measured with torch 2.13)."""
    B, H, _, D = qh.shape
    Hkv = kh.shape[1]
    scores = qh.reshape(B, Hkv, H // Hkv, D) @ kh.transpose(-1, -2)  # (B, H_kv, group, S)
    probs = (scores.to(torch.promote_types(scores.dtype, torch.float32)) * D**-0.5).softmax(-1)  # bf16: in fp32
    return (probs.to(vh.dtype) @ vh).reshape(B, H, 1, vh.shape[-1])


QK_NORMS = (None, "head", "full")


@register("attn")
class Attention(Mixer):
    """Multi-head causal attention with RoPE and grouped-query heads (`num_kv_heads` < heads); `num_heads` sets the
    head count instead of `model.head_dim`. Its cache (`KVCache`) keeps keys and values in the activations' dtype:
    all of them (the state grows with the sequence), or the last `window_size` with a window (it does not).

    Options (conf/mixer/attn.yaml documents each): `head_size` (heads of their own width, so that the projections
    are `num_heads * head_size` wide, not d_model), `qk_norm` (RMSNorm of q and k before RoPE, eps `norm_eps`:
    over each head, `head`, as Qwen3; over the whole projection, `full`, as OLMo-Hybrid), `rope_dim` (rotate only
    the first `rope_dim` channels of each head: partial RoPE), `rope_scaling`
    (`zoo.model.layers.rope_frequencies`), `qkv_bias`, `out_bias`, and `output_gate` (gated attention, Qwen3-Next /
    Qwen3.5: `q_proj` also gives each head a gate, laid out per head as [q, gate], and the attention output is
    multiplied by `sigmoid(gate)` before `o_proj`)."""

    preallocates = True  # KVCache.reserve: `HybridLM.prefill(max_length=...)` allocates the keys once
    # what configs written before each option meant: heads from model.head_dim, no QK norm, full unscaled RoPE,
    # no output bias
    added_options = {
        "num_heads": None,
        "head_size": None,
        "qk_norm": None,
        "norm_eps": 1.0e-6,
        "rope_dim": None,
        "rope_scaling": None,
        "out_bias": False,
        "output_gate": False,
    }

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
    ):
        super().__init__(layer_idx)
        if head_size is None:
            # heads of model.head_dim, or num_heads of their own (Zoology's attention has one head at every width)
            self.num_heads, head_dim, _ = split_heads(self.name, layer_idx, d_model, d_model, num_heads, head_dim)
        elif num_heads is None or head_size < 1:
            raise ConfigError(f"layer {layer_idx}: head_size={head_size} needs num_heads, and must be >= 1")
        else:  # heads of their own width: the projections are num_heads * head_size wide, whatever d_model is
            self.num_heads, head_dim = num_heads, head_size
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads or self.num_heads
        check_divides("num_kv_heads must divide the number of heads", self.num_heads, self.num_kv_heads, layer_idx)
        if window_size is not None and window_size < 1:
            raise ConfigError(f"layer {layer_idx}: window_size must be >= 1 or null, got {window_size}")
        self.window_size = window_size
        self.rope_theta = rope_theta
        self.rope_dim = head_dim if rope_dim is None else rope_dim
        if not 0 < self.rope_dim <= head_dim or self.rope_dim % 2:
            raise ConfigError(
                f"layer {layer_idx}: rope_dim must be even and in 1..{head_dim} (the head), got {rope_dim}"
            )
        # derived from the config, and kept fp32 on purpose: not a buffer, so that model.to(bf16) cannot round it
        self.inv_freq = None if rope_theta is None else rope_frequencies(self.rope_dim, rope_theta, rope_scaling)
        if rope_theta is None and rope_scaling is not None:
            raise ConfigError(f"layer {layer_idx}: rope_scaling={rope_scaling} needs rotary (rope_theta is null)")
        self.output_gate = output_gate
        self.q_proj = nn.Linear(d_model, self.num_heads * head_dim * (2 if output_gate else 1), bias=qkv_bias)
        self.k_proj = nn.Linear(d_model, self.num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d_model, self.num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * head_dim, d_model, bias=out_bias)
        # the dtype of the KV cache (and of the attention over it) at inference; None: the activations'.
        # HybridLM.quantize(kv_cache="bf16") sets it: decode at long contexts reads mostly the cache
        self.kv_dtype: torch.dtype | None = None
        if qk_norm not in QK_NORMS:
            raise ConfigError(f"layer {layer_idx}: qk_norm must be one of {list(QK_NORMS)}, got {qk_norm!r}")
        self.qk_norm = qk_norm
        # per head: one weight of head_dim shared by the heads; full: one weight over the whole projection
        q_width, k_width = (
            (head_dim, head_dim) if qk_norm == "head" else (self.num_heads * head_dim, self.num_kv_heads * head_dim)
        )
        self.q_norm = None if qk_norm is None else RMSNorm(q_width, norm_eps)
        self.k_norm = None if qk_norm is None else RMSNorm(k_width, norm_eps)

    fusable = (QKV,)

    def heads(self, x: torch.Tensor, cache: KVCache | None):
        """`q [B, H, T, D]`, `k, v [B, H_kv, T, D]` (QK norm and RoPE applied, in the KV cache's dtype when it has
        one), the output gate `[B, T, H * D]` or None, and the position of the first token."""
        B, T, _ = x.shape
        q, k, v = self.project(x, QKV)
        gate = None
        if self.output_gate:  # per head [q, gate]
            q, gate = q.view(B, T, self.num_heads, 2 * self.head_dim).chunk(2, dim=-1)
            q, gate = q.reshape(B, T, -1), gate.reshape(B, T, -1)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        start = cache.offset if cache is not None else 0  # int, or [B] per row in a stacked cache
        positions = positions_after(start, T, x.device)  # (T,) or (B, T)
        if self.rope_theta is not None:
            q, k = self._rope(q, positions), self._rope(k, positions)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D): the cache's layout
        if cache is not None and self.kv_dtype is not None:  # attention over the cache runs in its dtype
            q, k, v = q.to(self.kv_dtype), k.to(self.kv_dtype), v.to(self.kv_dtype)
        return q, k, v, gate, start

    def forward(self, x: torch.Tensor, cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v, gate, start = self.heads(x, cache)
        key_mask = None
        if cache is not None:
            # Keys are right-aligned per row, so the last `window_size` slots hold each row's last real keys
            # (the window counts real positions); padding slots that fall out of the window are dropped.
            k, v, key_mask = cache.extend(k, v, self.window_size)
            cache.offset = start + T
        o = attend(q, k, v, 0, self.window_size, key_mask, heads_first=True).transpose(1, 2).reshape(B, T, -1)
        o = o.to(x.dtype)
        if gate is not None:
            o = o * torch.sigmoid(gate)
        return self.o_proj(o), cache

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE on the first `rope_dim` channels of each head; the rest pass through (partial RoPE)."""
        if self.rope_dim == self.head_dim:
            return rotary(x, positions, self.rope_theta, self.inv_freq)
        rotated = rotary(x[..., : self.rope_dim], positions, self.rope_theta, self.inv_freq)
        return torch.cat([rotated, x[..., self.rope_dim :]], dim=-1)

    def kernel_backends(self) -> dict[str, str]:
        # On CUDA, training runs under bf16 autocast, so flash-attn serves it whenever it is installed.
        on_cuda = activation_device(self).type == "cuda"
        flash = on_cuda and importlib.util.find_spec("flash_attn") is not None
        return {"attention": "flash_attn (fp16/bf16), sdpa (fp32)" if flash else "sdpa"}

    @property
    def state_grows(self) -> bool:
        return self.window_size is None  # a sliding window keeps only its last window_size keys

    def flops_per_token(self, seq_len: int) -> float:
        """The projections, plus `q.k` and `p.v` of every query head over the keys it sees (the window's, or
        (T + 1) / 2 on average under the causal mask): `2 * 2 * heads * head_dim` per key."""
        keys = mean_causal_keys(seq_len, self.window_size)
        return super().flops_per_token(seq_len) + 4 * self.num_heads * self.head_dim * keys

    def init_cache(self) -> KVCache:
        return KVCache()

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        kept = seq_len if self.window_size is None else min(seq_len, self.window_size)
        keys = ((self.num_kv_heads, kept, self.head_dim), self.kv_dtype or self.param_dtype)
        return [keys, keys]  # k and v
