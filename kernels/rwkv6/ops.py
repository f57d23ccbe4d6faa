"""Public RWKV-5/6 ops: :func:`chunk_rwkv6` (training / prefill) and :func:`fused_recurrent_rwkv6` (decode).

Each checks its inputs, resolves ``backend`` once (``kernels.backend``) and dispatches to ``naive.py``,
``torch.py`` or ``triton/`` (imported only when that backend runs). The recurrence is in the package docstring.
"""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.rwkv6.naive import naive_recurrent_rwkv6
from kernels.rwkv6.torch import chunk_rwkv6_torch, fused_recurrent_rwkv6_torch
from kernels.utils import check_inputs, run_varlen, without_autocast

__all__ = ["chunk_rwkv6", "fused_recurrent_rwkv6"]


@without_autocast
def chunk_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel RWKV-5/6 (training and prefill).

    Args:
        r: receptance (the query) ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        w: log-space decay ``[B, T, H, K]``, ``w <= 0`` (RWKV: ``w = -exp(time_decay + ...)``).
        u: bonus ``[H, K]`` for the current token (RWKV's ``time_first``), shared by all sequences.
        scale: receptance scale; defaults to ``K ** -0.5`` like fla (RWKV itself uses ``1.0``).
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
    check_inputs(
        r, k, v, w=(w, "BTHK"), u=(u, "HK"), initial_state=initial_state, cu_seqlens=cu_seqlens, query_name="r"
    )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    resolved = resolve_backend(backend, r, k, v, w, u, initial_state, family="rwkv6")
    if resolved == "triton":
        from kernels.rwkv6.triton import chunk_rwkv6_triton

        return chunk_rwkv6_triton(r, k, v, w, u, scale, initial_state, output_final_state, chunk_size, cu_seqlens)
    if resolved == "naive":
        fn, extra = naive_recurrent_rwkv6, {}
    else:
        fn, extra = chunk_rwkv6_torch, {"chunk_size": chunk_size}
    if cu_seqlens is not None:
        per_token = {"r": r, "k": k, "v": v, "w": w}
        return run_varlen(fn, cu_seqlens, per_token, initial_state, output_final_state, u=u, scale=scale, **extra)
    return fn(r, k, v, w, u, scale, initial_state, output_final_state, **extra)


@without_autocast
def fused_recurrent_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step RWKV-5/6 (decode: T = 1 or a few tokens). Same arguments and returns as :func:`chunk_rwkv6`.

    Shapes: r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial_state ``[N, H, K, V]``
    (N = B, or ``len(cu_seqlens) - 1``); returns ``o [B, T, H, V]`` and ``final_state [N, H, K, V]``
    (fp32) or None.
    """
    check_inputs(
        r, k, v, w=(w, "BTHK"), u=(u, "HK"), initial_state=initial_state, cu_seqlens=cu_seqlens, query_name="r"
    )
    resolved = resolve_backend(backend, r, k, v, w, u, initial_state, family="rwkv6")
    if resolved == "triton":
        from kernels.rwkv6.triton import fused_recurrent_rwkv6_triton

        return fused_recurrent_rwkv6_triton(r, k, v, w, u, scale, initial_state, output_final_state, cu_seqlens)
    fn = naive_recurrent_rwkv6 if resolved == "naive" else fused_recurrent_rwkv6_torch
    if cu_seqlens is not None:
        return run_varlen(
            fn, cu_seqlens, {"r": r, "k": k, "v": v, "w": w}, initial_state, output_final_state, u=u, scale=scale
        )
    return fn(r, k, v, w, u, scale, initial_state, output_final_state)
