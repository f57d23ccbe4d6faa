"""The DPLR delta rule in Triton: chunkwise forward + backward kernels (``chunk.py``, with the pair terms in
``intra.py`` and the WY representation in ``wy.py``) and a fused recurrent decode kernel (``fused_recurrent.py``).
Loaded lazily by ``kernels.dplr_delta_rule`` when the backend resolves to ``"triton"``; RWKV-7
(``kernels.rwkv7``) runs on it.

Same contract as the other backends: q, k, a, b, gk ``[B, T, H, K]``, v ``[B, T, H, V]``, ``initial_state``
``[N, H, K, V]``; returns ``o`` in the dtype of v and the final state in fp32. Inputs are fp32, bf16 or fp16
(q, k, v, a, b are brought to one dtype; gk may differ), K <= 256; all accumulation is fp32.
"""

from __future__ import annotations

import torch

from kernels.dplr_delta_rule.triton.chunk import ChunkDPLRDeltaRuleFunction
from kernels.dplr_delta_rule.triton.fused_recurrent import fused_recurrent_dplr_fwd
from kernels.triton_utils import MAX_K, check_chunk_size, needs_autograd, prepare_inputs

__all__ = ["chunk_dplr_delta_rule_triton", "fused_recurrent_dplr_delta_rule_triton"]


def chunk_dplr_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked DPLR delta rule with Triton forward and backward kernels (differentiable in q, k, v, a, b, gk and
    initial_state).

    Shapes: q, k, a, b, gk ``[B, T, H, K]``; v ``[B, T, H, V]``; initial_state ``[N, H, K, V]``; cu_seqlens
    ``[N + 1]`` (packed sequences, B = 1) or None (N = B). ``chunk_size`` in (16, 32, 64). Returns
    ``o [B, T, H, V]`` (dtype of v) and the final state ``[N, H, K, V]`` (fp32) or None.
    """
    check_chunk_size(chunk_size)
    out_dtype = v.dtype
    q, k, v, a, b, gk, initial_state = prepare_inputs((q, k, v, a, b), (gk, initial_state), MAX_K)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = ChunkDPLRDeltaRuleFunction.apply(
        q, k, v, a, b, gk, scale, initial_state, output_final_state, chunk_size, cu_seqlens
    )
    return o.to(out_dtype), final_state


def fused_recurrent_dplr_delta_rule_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step DPLR delta rule for decode. Same shapes and returns as :func:`chunk_dplr_delta_rule_triton`.

    The fused kernel is forward-only. When autograd is recording and an input requires grad, the call runs the
    chunked Triton kernels instead (the same recurrence, with Triton backward kernels; chunk size 16).
    """
    if needs_autograd(q, k, v, a, b, gk, initial_state):
        return chunk_dplr_delta_rule_triton(
            q, k, v, a, b, gk, scale, initial_state, output_final_state, chunk_size=16, cu_seqlens=cu_seqlens
        )
    out_dtype = v.dtype
    q, k, v, a, b, gk, initial_state = prepare_inputs((q, k, v, a, b), (gk, initial_state), MAX_K)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final_state = fused_recurrent_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens)
    return o.to(out_dtype), final_state
