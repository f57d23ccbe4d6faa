"""RWKV-5/6 in Triton: chunkwise forward + backward kernels (``chunk.py``) and a fused recurrent decode kernel
(``fused_recurrent.py``). Loaded lazily by ``kernels.rwkv6`` when the backend resolves to ``"triton"``.

Same contract as the other backends: r, k, w ``[B, T, H, K]``, v ``[B, T, H, V]``, u ``[H, K]``,
``initial_state`` ``[N, H, K, V]``; returns ``o`` in the dtype of v and the final state in fp32. Inputs are
fp32, bf16 or fp16 (r, k, v are brought to one dtype; w, u and the initial state may differ); all
accumulation is fp32.
"""

from __future__ import annotations

import torch

from kernels.rwkv6.triton.chunk import ChunkRWKV6Function
from kernels.rwkv6.triton.fused_recurrent import fused_recurrent_rwkv6_fwd
from kernels.triton_utils import check_chunk_size, needs_autograd, prepare_inputs

__all__ = ["chunk_rwkv6_triton", "fused_recurrent_rwkv6_triton"]


def chunk_rwkv6_triton(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked RWKV-6 with Triton forward and backward kernels (differentiable in r, k, v, w, u, initial_state).

    Shapes: r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial_state ``[N, H, K, V]``;
    cu_seqlens ``[N + 1]`` (packed sequences, B = 1) or None (N = B). ``chunk_size`` in (16, 32, 64).
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[N, H, K, V]`` (fp32) or None.
    """
    check_chunk_size(chunk_size)
    out_dtype = v.dtype
    r, k, v, w, u, initial_state = prepare_inputs((r, k, v), (w, u, initial_state))
    scale = r.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = ChunkRWKV6Function.apply(
        r, k, v, w, u, scale, initial_state, output_final_state, chunk_size, cu_seqlens
    )
    return o.to(out_dtype), final_state


def fused_recurrent_rwkv6_triton(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step RWKV-6 for decode. Same shapes and returns as :func:`chunk_rwkv6_triton`.

    The fused kernel is forward-only. When autograd is recording and an input requires grad, the call
    runs the chunked Triton kernels instead (the same recurrence, exactly, with a backward).
    """
    if needs_autograd(r, k, v, w, u, initial_state):
        return chunk_rwkv6_triton(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens)
    out_dtype = v.dtype
    r, k, v, w, u, initial_state = prepare_inputs((r, k, v), (w, u, initial_state))
    scale = r.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = fused_recurrent_rwkv6_fwd(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
    return o.to(out_dtype), final_state
