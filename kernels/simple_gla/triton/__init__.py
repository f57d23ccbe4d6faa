"""Simple GLA in Triton: chunkwise forward + backward kernels (``chunk.py``) and, for decode, the fused
recurrent kernel it shares with GLA (``kernels/gla/triton/fused_recurrent.py``, scalar-gate case).
Loaded lazily by ``kernels.simple_gla`` when the backend resolves to ``"triton"``.

Same contract as the other backends: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g ``[B, T, H]`` or
g_gamma ``[H]`` or neither, ``initial_state [N, H, K, V]``; returns ``o`` in the dtype of v and the
final state in fp32. Inputs are fp32, bf16 or fp16 (q, k, v are brought to one dtype); fp32 accumulation.
"""

from __future__ import annotations

import torch

from kernels.gla.triton.fused_recurrent import fused_recurrent_gla_fwd
from kernels.simple_gla.triton.chunk import ChunkSimpleGLAFunction
from kernels.triton_utils import check_chunk_size, needs_autograd, prepare_inputs

__all__ = ["chunk_simple_gla_triton", "fused_recurrent_simple_gla_triton"]


def chunk_simple_gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked simple GLA with Triton forward and backward kernels (differentiable in q, k, v, g, g_gamma and
    initial_state).

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g ``[B, T, H]`` or g_gamma ``[H]`` or neither;
    initial_state ``[N, H, K, V]``; cu_seqlens ``[N + 1]`` (packed sequences, B = 1) or None (N = B).
    ``chunk_size`` in (16, 32, 64). Returns ``o [B, T, H, V]`` (dtype of v) and the final state
    ``[N, H, K, V]`` (fp32) or None.
    """
    check_chunk_size(chunk_size)
    out_dtype = v.dtype
    q, k, v, g, g_gamma, initial_state = prepare_inputs((q, k, v), (g, g_gamma, initial_state))
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = ChunkSimpleGLAFunction.apply(
        q, k, v, g, g_gamma, scale, initial_state, output_final_state, chunk_size, cu_seqlens
    )
    return o.to(out_dtype), final_state


def fused_recurrent_simple_gla_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step simple GLA for decode. Same shapes and returns as :func:`chunk_simple_gla_triton`.

    The fused kernel is forward-only. When autograd is recording and an input requires grad, the call
    runs the chunked Triton kernels instead (the same recurrence, exactly, with a backward).
    """
    if needs_autograd(q, k, v, g, g_gamma, initial_state):
        return chunk_simple_gla_triton(
            q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens=cu_seqlens
        )
    out_dtype = v.dtype
    q, k, v, g, g_gamma, initial_state = prepare_inputs((q, k, v), (g, g_gamma, initial_state))
    if g_gamma is not None:  # the constant gate as a per-step one
        g = g_gamma.float()[None, None, :].expand(q.shape[:3]).contiguous()
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = fused_recurrent_gla_fwd(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    return o.to(out_dtype), final_state
