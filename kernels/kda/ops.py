"""Public Kimi Delta Attention ops (family ``kda``): :func:`chunk_kda` (training / prefill) and
:func:`fused_recurrent_kda` (decode), in fla's layout and argument order: input checks, one backend resolution
(``kernels.backend``), then ``naive.py``, ``torch.py`` or ``triton/`` (imported only when that backend runs). The
recurrence is in the package docstring."""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.kda.naive import naive_recurrent_kda
from kernels.kda.torch import chunk_kda_torch, fused_recurrent_kda_torch
from kernels.utils import check_chunk_arg, check_inputs, run_torch_backends, without_autocast

__all__ = ["chunk_kda", "fused_recurrent_kda"]


@without_autocast
def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel Kimi Delta Attention (Kimi Linear, arXiv 2510.26692; training and prefill).

    ``S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``, L2-normalized along K by the caller.
        v: values ``[B, T, H, V]``.
        g: log decay per key channel ``[B, T, H, K]``, ``<= 0``.
        beta: write strengths ``[B, T, H]``, in (0, 1), or (0, 2) for negative eigenvalues.
        scale: query scale; defaults to ``K ** -0.5``.
        initial_state: ``[N, H, K, V]`` (zeros if None); N = B, or the number of packed sequences.
        output_final_state: also return the state after the last token (of every sequence).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"naive"`` (see ``kernels.backend``: ``auto`` is
            ``triton`` on CUDA tensors, ``torch`` elsewhere).
        chunk_size: chunk length; T need not be a multiple of it. The ``triton`` backend takes 16, 32 or 64
            (and K <= 256); ``torch`` rounds it up to a multiple of its 8-token sub-chunks.
        cu_seqlens: ``[N + 1]`` offsets of sequences packed along T (B must be 1), fla's convention.

    Returns:
        ``(o [B, T, H, V]`` in the dtype of v, ``final_state [N, H, K, V]`` in fp32, or None unless requested).
    """
    return _run(q, k, v, g, beta, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens)


@without_autocast
def fused_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step KDA (decode). Same arguments and returns as :func:`chunk_kda` (no ``chunk_size``)."""
    return _run(q, k, v, g, beta, scale, initial_state, output_final_state, backend, None, cu_seqlens)


def _run(q, k, v, g, beta, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens):
    if g is None:
        raise ValueError(
            "kda needs g [B, T, H, K] (log decay per key channel); for a scalar decay use the gated delta rule"
        )
    check_inputs(q, k, v, g=(g, "BTHK"), beta=(beta, "BTH"), initial_state=initial_state, cu_seqlens=cu_seqlens)
    check_chunk_arg(chunk_size)
    resolved = resolve_backend(backend, q, k, v, g, beta, initial_state, family="kda")
    if resolved == "triton":  # imported lazily: `import kernels` never imports Triton
        from kernels.kda.triton import chunk_kda_triton, fused_recurrent_kda_triton

        if chunk_size is None:
            return fused_recurrent_kda_triton(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)
        return chunk_kda_triton(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens)
    per_token = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    return run_torch_backends(
        resolved,
        naive_recurrent_kda,
        chunk_kda_torch,
        fused_recurrent_kda_torch,
        chunk_size,
        per_token,
        initial_state,
        output_final_state,
        scale,
        cu_seqlens,
    )
