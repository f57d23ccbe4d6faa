"""Kimi Delta Attention in Triton: chunkwise forward + backward kernels (``chunk.py``, with the per-channel pair
terms in ``intra.py`` and the WY representation in ``wy.py``) and a fused recurrent decode kernel
(``fused_recurrent.py``). Loaded lazily by ``kernels.kda`` when the backend resolves to ``"triton"``.

Same contract as the other backends: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, beta ``[B, T, H]``,
``initial_state [N, H, K, V]``; returns ``o`` in the dtype of v and the final state in fp32. Inputs are fp32,
bf16 or fp16 (q, k, v are brought to one dtype; g, beta and the state may differ), K <= 256; all accumulation
is fp32.
"""

from __future__ import annotations

import torch

from kernels.kda.triton.chunk import ChunkKDAFunction
from kernels.kda.triton.fused_recurrent import fused_recurrent_kda_fwd
from kernels.triton_utils import MAX_K, check_chunk_size, needs_autograd, prepare_inputs

__all__ = ["chunk_kda_triton", "fused_recurrent_kda_triton"]


def chunk_kda_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked KDA with Triton forward and backward kernels (differentiable in q, k, v, g, beta and
    initial_state).

    Shapes: q, k, g ``[B, T, H, K]``; v ``[B, T, H, V]``; beta ``[B, T, H]``; initial_state ``[N, H, K, V]``;
    cu_seqlens ``[N + 1]`` (packed sequences, B = 1) or None (N = B). ``chunk_size`` in (16, 32, 64). Returns
    ``o [B, T, H, V]`` (dtype of v) and the final state ``[N, H, K, V]`` (fp32) or None.
    """
    check_chunk_size(chunk_size)
    out_dtype = v.dtype
    q, k, v, g, beta, initial_state = prepare_inputs((q, k, v), (g, beta, initial_state), MAX_K)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = ChunkKDAFunction.apply(
        q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens
    )
    return o.to(out_dtype), final_state


def fused_recurrent_kda_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step KDA for decode. Same shapes and returns as :func:`chunk_kda_triton`.

    The fused kernel is forward-only. When autograd is recording and an input requires grad, the call runs the
    chunked Triton kernels instead (the same recurrence, with Triton backward kernels; chunk size 16).
    """
    if needs_autograd(q, k, v, g, beta, initial_state):
        return chunk_kda_triton(
            q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size=16, cu_seqlens=cu_seqlens
        )
    out_dtype = v.dtype
    q, k, v, g, beta, initial_state = prepare_inputs((q, k, v), (g, beta, initial_state), MAX_K)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = fused_recurrent_kda_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)
    return o.to(out_dtype), final_state
