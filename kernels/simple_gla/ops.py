"""Public simple GLA ops: :func:`chunk_simple_gla` (training / prefill) and :func:`fused_recurrent_simple_gla`
(decode).

Each checks its inputs, resolves ``backend`` once (``kernels.backend``) and dispatches to ``naive.py``,
``torch.py`` or ``triton/`` (imported only when that backend runs). The recurrence is in the package docstring.
"""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.simple_gla.naive import naive_recurrent_simple_gla
from kernels.simple_gla.torch import chunk_simple_gla_torch, fused_recurrent_simple_gla_torch
from kernels.utils import check_inputs, run_varlen, without_autocast

__all__ = ["chunk_simple_gla", "fused_recurrent_simple_gla"]


@without_autocast
def chunk_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel simple GLA (training and prefill).

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        g: data-dependent log-space decay ``[B, T, H]``, ``g <= 0`` (Mamba-2: ``A * dt``); or None.
        g_gamma: constant per-head log-space decay ``[H]``, ``g_gamma <= 0`` (RetNet:
            ``log(1 - 2 ** (-5 - h))``); or None. At most one of ``g`` and ``g_gamma``; neither means
            no decay (plain linear attention).
        scale: query scale; defaults to ``K ** -0.5``.
        initial_state: state ``[N, H, K, V]`` to continue from (zeros if None); N = B, or the number
            of packed sequences with ``cu_seqlens``.
        output_final_state: also return the state after the last token (of every sequence).
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"naive"`` (see ``kernels.backend``).
        chunk_size: chunk length; T need not be a multiple of it. The ``triton`` backend takes 16, 32 or 64.
        cu_seqlens: optional ``[N + 1]`` int offsets of N sequences packed along T (B must be 1), fla's
            convention; no state crosses a sequence boundary. ``g`` is per token (sliced with the
            sequences), ``g_gamma`` is shared by all of them.

    Returns:
        ``(o, final_state)``: ``o [B, T, H, V]`` in the dtype of v (computed in fp32);
        ``final_state [N, H, K, V]`` in fp32 (fp64 for fp64 inputs), or None unless requested.
    """
    _check(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    resolved = resolve_backend(backend, q, k, v, g, g_gamma, initial_state, family="simple_gla")
    if resolved == "triton":  # imported lazily: `import kernels` never imports Triton
        from kernels.simple_gla.triton import chunk_simple_gla_triton

        return chunk_simple_gla_triton(
            q, k, v, g, g_gamma, scale, initial_state, output_final_state, chunk_size, cu_seqlens
        )
    if resolved == "naive":
        fn, extra = naive_recurrent_simple_gla, {}
    else:
        fn, extra = chunk_simple_gla_torch, {"chunk_size": chunk_size}
    return _run(fn, q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens, **extra)


@without_autocast
def fused_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step simple GLA (decode: T = 1 or a few tokens). Same arguments and returns as
    :func:`chunk_simple_gla`, without ``chunk_size``.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g ``[B, T, H]`` or g_gamma ``[H]`` or neither;
    initial_state ``[N, H, K, V]``; cu_seqlens ``[N + 1]``; returns ``o [B, T, H, V]`` and
    ``final_state [N, H, K, V]`` (fp32) or None.
    """
    _check(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    resolved = resolve_backend(backend, q, k, v, g, g_gamma, initial_state, family="simple_gla")
    if resolved == "triton":
        from kernels.simple_gla.triton import fused_recurrent_simple_gla_triton

        return fused_recurrent_simple_gla_triton(
            q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens
        )
    fn = naive_recurrent_simple_gla if resolved == "naive" else fused_recurrent_simple_gla_torch
    return _run(fn, q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens)


def _check(q, k, v, g, g_gamma, initial_state, cu_seqlens) -> None:
    if g is not None and g_gamma is not None:
        raise ValueError(
            f"pass either g [B, T, H] (data-dependent decay, got shape {tuple(g.shape)}) or g_gamma [H] "
            f"(constant per-head decay, got shape {tuple(g_gamma.shape)}), not both"
        )
    check_inputs(q, k, v, g=(g, "BTH"), g_gamma=(g_gamma, "H"), initial_state=initial_state, cu_seqlens=cu_seqlens)


def _run(fn, q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens, **extra):
    """Call an implementation on the whole batch, or sequence by sequence for packed input."""
    if cu_seqlens is not None:
        per_token = {"q": q, "k": k, "v": v, "g": g}
        return run_varlen(
            fn, cu_seqlens, per_token, initial_state, output_final_state, g_gamma=g_gamma, scale=scale, **extra
        )
    return fn(q, k, v, g, g_gamma, scale, initial_state, output_final_state, **extra)
