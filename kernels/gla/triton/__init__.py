"""GLA in Triton: chunkwise forward + backward kernels (``chunk.py``) and a fused recurrent decode kernel
(``fused_recurrent.py``). Loaded lazily by ``kernels.gla`` when the backend resolves to ``"triton"``.

Same contract as the other backends: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, ``initial_state``
``[N, H, K, V]``; returns ``o`` in the dtype of v and the final state in fp32. Inputs are fp32, bf16 or
fp16 (q, k, v are brought to one dtype; g may differ); all accumulation is fp32.
"""

from __future__ import annotations

import torch

from kernels.gla.triton.chunk import ChunkGLAFunction
from kernels.gla.triton.fused_recurrent import fused_recurrent_gla_fwd
from kernels.triton_utils import check_chunk_size, needs_autograd, prepare_inputs

__all__ = ["chunk_gla_triton", "fused_recurrent_gla_triton"]


def chunk_gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked GLA with Triton forward and backward kernels (differentiable in q, k, v, g, initial_state).

    Shapes: q, k, g ``[B, T, H, K]``; v ``[B, T, H, V]``; initial_state ``[N, H, K, V]``; cu_seqlens
    ``[N + 1]`` (packed sequences, B = 1) or None (N = B). ``chunk_size`` in (16, 32, 64).
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[N, H, K, V]`` (fp32) or None.
    """
    check_chunk_size(chunk_size)
    out_dtype = v.dtype
    q, k, v, g, initial_state = prepare_inputs((q, k, v), (g, initial_state))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = ChunkGLAFunction.apply(
        q, k, v, g, scale, initial_state, output_final_state, chunk_size, cu_seqlens
    )
    return o.to(out_dtype), final_state


def fused_recurrent_gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step GLA for decode. Same shapes and returns as :func:`chunk_gla_triton` (N = B).

    The fused kernel is forward-only. When autograd is recording and an input requires grad, the call
    runs the chunked Triton kernels instead (the same recurrence, exactly, with a backward).
    """
    if needs_autograd(q, k, v, g, initial_state):
        return chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state)
    out_dtype = v.dtype
    q, k, v, g, initial_state = prepare_inputs((q, k, v), (g, initial_state))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = fused_recurrent_gla_fwd(q, k, v, g, scale, initial_state, output_final_state)
    return o.to(out_dtype), final_state
