"""Public DPLR delta rule ops (family ``dplr_delta_rule``): :func:`chunk_dplr_delta_rule` (training / prefill) and
:func:`fused_recurrent_dplr_delta_rule` (decode), in fla's layout and argument order: input checks, one backend
resolution (``kernels.backend``), then ``naive.py``, ``torch.py`` or ``triton/`` (imported only when that backend
runs)."""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.dplr_delta_rule.naive import naive_recurrent_dplr_delta_rule
from kernels.dplr_delta_rule.torch import chunk_dplr_delta_rule_torch, fused_recurrent_dplr_delta_rule_torch
from kernels.utils import check_chunk_arg, check_inputs, run_torch_backends, without_autocast

__all__ = ["chunk_dplr_delta_rule", "fused_recurrent_dplr_delta_rule"]


@without_autocast
def chunk_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel generalized (diagonal plus low-rank) delta rule (training and prefill).

    ``S_t = (Diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``: a diagonal decay
    plus a rank-one update of the transition. With ``a = -beta k`` and ``b = k`` (and a scalar decay) it is the
    gated delta rule; RWKV-7 passes ``a = -kk``, ``b = kk * a_gate`` (``kernels.chunk_rwkv7``).

    Args:
        q, k, a, b: ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        gk: log decay per key channel ``[B, T, H, K]``, ``<= 0``.
        scale: query scale; defaults to ``K ** -0.5``.
        initial_state: ``[N, H, K, V]`` (zeros if None); N = B, or the number of packed sequences.
        output_final_state: also return the state after the last token (of every sequence).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"naive"`` (see ``kernels.backend``).
        chunk_size: chunk length; T need not be a multiple of it. The ``triton`` backend takes 16, 32 or 64;
            ``torch`` rounds a chunk above 8 up to a multiple of 8.
        cu_seqlens: ``[N + 1]`` offsets of sequences packed along T (B must be 1), fla's convention.

    Returns:
        ``(o [B, T, H, V]`` in the dtype of v, ``final_state [N, H, K, V]`` in fp32, or None unless requested).
    """
    return _run(q, k, v, a, b, gk, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens)


@without_autocast
def fused_recurrent_dplr_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step DPLR delta rule (decode). Same arguments and returns as :func:`chunk_dplr_delta_rule` (no
    ``chunk_size``). The ``triton`` step kernel is forward-only: with autograd recording and an input that requires
    grad, the call runs the chunked Triton kernels (chunk 16), which have a backward."""
    return _run(q, k, v, a, b, gk, scale, initial_state, output_final_state, backend, None, cu_seqlens)


def _run(q, k, v, a, b, gk, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens):
    layout = "BTHK"
    check_inputs(
        q, k, v, a=(a, layout), b=(b, layout), gk=(gk, layout), initial_state=initial_state, cu_seqlens=cu_seqlens
    )
    if a is None or b is None or gk is None:
        raise ValueError("the DPLR delta rule needs a, b and gk, each [B, T, H, K]")
    check_chunk_arg(chunk_size)
    resolved = resolve_backend(backend, q, k, v, a, b, gk, initial_state, family="dplr_delta_rule")
    if resolved == "triton":  # imported lazily: `import kernels` never imports Triton
        from kernels.dplr_delta_rule.triton import (
            chunk_dplr_delta_rule_triton,
            fused_recurrent_dplr_delta_rule_triton,
        )

        if chunk_size is None:
            return fused_recurrent_dplr_delta_rule_triton(
                q, k, v, a, b, gk, scale, initial_state, output_final_state, cu_seqlens
            )
        return chunk_dplr_delta_rule_triton(
            q, k, v, a, b, gk, scale, initial_state, output_final_state, chunk_size, cu_seqlens
        )
    per_token = {"q": q, "k": k, "v": v, "a": a, "b": b, "gk": gk}
    return run_torch_backends(
        resolved,
        naive_recurrent_dplr_delta_rule,
        chunk_dplr_delta_rule_torch,
        fused_recurrent_dplr_delta_rule_torch,
        chunk_size,
        per_token,
        initial_state,
        output_final_state,
        scale,
        cu_seqlens,
    )
