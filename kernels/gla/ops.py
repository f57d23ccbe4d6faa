"""Public GLA ops: :func:`chunk_gla` (training / prefill) and :func:`fused_recurrent_gla` (decode).

Each checks its inputs, resolves ``backend`` once (``kernels.backend``) and dispatches to ``naive.py``,
``torch.py`` or ``triton/`` (imported only when that backend runs). The recurrence is in the package docstring.
"""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.gla.naive import naive_recurrent_gla
from kernels.gla.torch import chunk_gla_torch, fused_recurrent_gla_torch
from kernels.utils import check_inputs, run_varlen, without_autocast

__all__ = ["chunk_gla", "fused_recurrent_gla"]


@without_autocast
def chunk_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel GLA (training and prefill).

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        g: log-space decay ``[B, T, H, K]``, ``g <= 0`` (e.g. ``logsigmoid(x) / 16``).
        scale: query scale; defaults to ``K ** -0.5``.
        initial_state: state ``[N, H, K, V]`` to continue from (zeros if None); N = B, or the number
            of packed sequences with ``cu_seqlens``.
        output_final_state: also return the state after the last token (of every sequence).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"naive"`` (see ``kernels.backend``).
        chunk_size: chunk length; T need not be a multiple of it. The ``triton`` backend takes 16, 32 or 64.
        cu_seqlens: optional ``[N + 1]`` int offsets of N sequences packed along T (B must be 1), fla's
            convention; no state crosses a sequence boundary.

    Returns:
        ``(o, final_state)``: ``o [B, T, H, V]`` in the dtype of v (computed in fp32);
        ``final_state [N, H, K, V]`` in fp32 (fp64 for fp64 inputs), or None unless requested.
    """
    check_inputs(q, k, v, g=(g, "BTHK"), initial_state=initial_state, cu_seqlens=cu_seqlens)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    resolved = resolve_backend(backend, q, k, v, g, initial_state, family="gla")
    if resolved == "triton":
        from kernels.gla.triton import chunk_gla_triton

        return chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, chunk_size, cu_seqlens)
    if resolved == "naive":
        fn, extra = naive_recurrent_gla, {}
    else:
        fn, extra = chunk_gla_torch, {"chunk_size": chunk_size}
    if cu_seqlens is not None:
        return run_varlen(
            fn, cu_seqlens, {"q": q, "k": k, "v": v, "g": g}, initial_state, output_final_state, scale=scale, **extra
        )
    return fn(q, k, v, g, scale, initial_state, output_final_state, **extra)


@without_autocast
def fused_recurrent_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step GLA (decode: T = 1 or a few tokens). Same arguments and returns as :func:`chunk_gla`.

    Shapes: q, k, g ``[B, T, H, K]``; v ``[B, T, H, V]``; initial_state ``[B, H, K, V]``;
    returns ``o [B, T, H, V]`` and ``final_state [B, H, K, V]`` (fp32) or None.
    """
    check_inputs(q, k, v, g=(g, "BTHK"), initial_state=initial_state)
    resolved = resolve_backend(backend, q, k, v, g, initial_state, family="gla")
    if resolved == "triton":
        from kernels.gla.triton import fused_recurrent_gla_triton

        return fused_recurrent_gla_triton(q, k, v, g, scale, initial_state, output_final_state)
    if resolved == "naive":
        return naive_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state)
    return fused_recurrent_gla_torch(q, k, v, g, scale, initial_state, output_final_state)
