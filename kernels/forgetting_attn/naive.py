"""Reference forgetting attention: the whole masked score matrix, softmax, values. The oracle for every other backend.

Keep it short and obviously right; never optimize it.
"""

from __future__ import annotations

import torch

__all__ = ["naive_forgetting_attn", "naive_forgetting_attn_cached"]


def naive_forgetting_attn_cached(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gc_q: torch.Tensor,
    gc_k: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
) -> torch.Tensor:
    """Queries at the last T of S key positions: ``o_i = sum_j softmax_j(scale q_i . k_j + gc_q_i - gc_k_j) v_j``
    over ``j <= i`` (and ``j > i - window_size``). Shapes: q ``[B, T, HQ, K]``; k ``[B, S, H, K]``, v ``[B, S, H, V]``
    (HQ a multiple of H: grouped queries); gc_q ``[B, T, HQ]``, gc_k ``[B, S, HQ]`` cumulative log forget gates.
    Returns ``o [B, T, HQ, V]`` in the dtype of v (computed in fp32, or fp64 for fp64 inputs)."""
    T, HQ, K = q.shape[1:]
    S, group = k.shape[1], HQ // k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    k, v = (x.to(acc).repeat_interleave(group, dim=2) for x in (k, v))  # query head h reads kv head h // group
    scores = torch.einsum("bihd,bjhd->bhij", q.to(acc) * scale, k)
    scores = scores + gc_q.to(acc).transpose(1, 2)[..., :, None] - gc_k.to(acc).transpose(1, 2)[..., None, :]
    i, j = torch.arange(S - T, S, device=q.device)[:, None], torch.arange(S, device=q.device)[None, :]
    allowed = (j <= i) if window_size is None else (j <= i) & (j > i - window_size)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).to(v.dtype)


def naive_forgetting_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
) -> torch.Tensor:
    """``o_i = sum_j softmax_j(scale q_i . k_j + g_{j+1} + ... + g_i) v_j`` over ``j <= i`` (and ``j > i - window``).
    g ``[B, T, HQ]``: log forget gates (<= 0); the other shapes as :func:`naive_forgetting_attn_cached` with S = T."""
    G = g.to(torch.promote_types(g.dtype, torch.float32)).cumsum(1)
    return naive_forgetting_attn_cached(q, k, v, G, G, scale, window_size)
