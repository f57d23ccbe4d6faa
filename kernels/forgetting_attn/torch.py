"""Forgetting attention in PyTorch: PyTorch's scaled-dot-product attention per block of queries, with the forget
gates as an additive float mask, so that memory stays `[block, keys]` per head instead of `[T, T]`.

One function serves training, prefill and decode (`forgetting_attn_torch`): the queries are the last T of S
positions, and the cumulative gates of queries and keys come in separately, so a cache that keeps every key's
cumulative gate continues a sequence exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["forgetting_attn_torch"]


def forgetting_attn_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gc_q: torch.Tensor,
    gc_k: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
    block: int = 256,
) -> torch.Tensor:
    """Queries at positions ``S - T .. S - 1`` of the keys: ``o_i = softmax_j(scale q_i . k_j + gc_q_i - gc_k_j) v``
    over ``j <= i`` (and ``j > i - window_size``).

    Shapes: q ``[B, T, HQ, K]``, k ``[B, S, H, K]``, v ``[B, S, H, V]`` (S >= T, HQ a multiple of H), gc_q
    ``[B, T, HQ]`` and gc_k ``[B, S, HQ]`` cumulative log forget gates (the same running sum for both, so that
    ``gc_q_i - gc_k_j`` is the sum of the gates of tokens j+1 .. i, <= 0). Returns ``o [B, T, HQ, V]`` in the dtype
    of v, computed in fp32 (fp64 for fp64 inputs).
    """
    B, T, HQ, K = q.shape
    S = k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    qh, kh, vh = (x.to(acc).transpose(1, 2) for x in (q, k, v))  # (B, heads, positions, D)
    gq, gk = gc_q.to(acc).transpose(1, 2), gc_k.to(acc).transpose(1, 2)  # (B, HQ, T), (B, HQ, S)
    out = []
    for a in range(0, T, block):
        b = min(a + block, T)
        pos = torch.arange(S - T + a, S - T + b, device=q.device)[:, None]  # the block's query positions
        lo = 0 if window_size is None else max(0, S - T + a - window_size + 1)  # the first key any of them sees
        hi = S - T + b  # one past the last key any of them sees
        j = torch.arange(lo, hi, device=q.device)[None, :]
        allowed = (j <= pos) if window_size is None else (j <= pos) & (j > pos - window_size)
        bias = (gq[..., a:b, None] - gk[..., None, lo:hi]).masked_fill(~allowed, float("-inf"))
        o = F.scaled_dot_product_attention(
            qh[:, :, a:b], kh[:, :, lo:hi], vh[:, :, lo:hi], attn_mask=bias, scale=scale, enable_gqa=True
        )
        out.append(o)
    return torch.cat(out, dim=2).transpose(1, 2).to(v.dtype)
