"""Forgetting attention in Triton: flash-attention forward and backward kernels (``parallel.py``) serving both
public ops. Loaded lazily by ``kernels.forgetting_attn`` when the backend resolves to ``"triton"``.

Same contract as the other backends: q ``[B, T, HQ, K]``, k ``[B, S, H, K]``, v ``[B, S, H, V]`` (HQ a multiple
of H), gates ``[B, T, HQ]``; returns ``o`` alone, in the dtype of v, differentiable in every tensor input. Inputs
are fp32, bf16 or fp16 (q, k, v are brought to one dtype; the gates may differ), K and V <= 256; accumulation
and the cumulative gates are fp32.
"""

from __future__ import annotations

import torch

from kernels.forgetting_attn.triton.parallel import MAX_HEAD_DIM, ForgettingAttnFunction
from kernels.triton_utils import prepare_inputs

__all__ = ["parallel_forgetting_attn_triton", "forgetting_attn_cached_triton"]


def parallel_forgetting_attn_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forgetting attention over whole sequences (training, prefill): q ``[B, T, HQ, K]``, k ``[B, T, H, K]``,
    v ``[B, T, H, V]``, log forget gates g ``[B, T, HQ]``, ``cu_seqlens [N + 1]`` (packed sequences, B = 1) or
    None. The gates are cumulated per sequence in fp32 inside. Returns ``o [B, T, HQ, V]`` (dtype of v)."""
    out_dtype = v.dtype
    q, k, v, g = _prepare(q, k, v, g)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o = ForgettingAttnFunction.apply(q, k, v, g, None, scale, window_size, cu_seqlens)
    return o.to(out_dtype)


def forgetting_attn_cached_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gc_q: torch.Tensor,
    gc_k: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
) -> torch.Tensor:
    """The last T of S positions against all S cached keys (chunked prefill, decode): q ``[B, T, HQ, K]``, k
    ``[B, S, H, K]``, v ``[B, S, H, V]``, cumulative gates gc_q ``[B, T, HQ]`` and gc_k ``[B, S, HQ]`` (``+inf``
    marks a padding slot no query sees). Returns ``o [B, T, HQ, V]`` (dtype of v)."""
    out_dtype = v.dtype
    q, k, v, gc_q, gc_k = _prepare(q, k, v, gc_q, gc_k)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o = ForgettingAttnFunction.apply(q, k, v, gc_q, gc_k, scale, window_size, None)
    return o.to(out_dtype)


def _prepare(q, k, v, *gates):
    """Check head dims and dtypes, bring q, k, v to one dtype and make everything contiguous."""
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(
            f"backend='triton' supports head dims K, V <= {MAX_HEAD_DIM} (one tile per row), got "
            f"q.shape={tuple(q.shape)}, v.shape={tuple(v.shape)}; use backend='torch'"
        )
    return prepare_inputs((q, k, v), gates)
