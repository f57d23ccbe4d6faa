"""Gated linear attention (GLA) ops: per-channel data-dependent decay, fla-compatible conventions.

Recurrence per head (``S`` is K x V)::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t
    o_t = (scale * q_t) S_t

Public ops: :func:`chunk_gla` (training / prefill) and :func:`fused_recurrent_gla` (decode).
Backends: ``naive`` (per-step loop, the oracle), ``torch`` (chunked PyTorch / step loop);
``triton`` is not implemented for this family yet.
"""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.gla.naive import naive_recurrent_gla
from kernels.gla.torch import chunk_gla_torch, fused_recurrent_gla_torch

__all__ = ["chunk_gla", "fused_recurrent_gla", "naive_recurrent_gla", "chunk_gla_torch", "fused_recurrent_gla_torch"]


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel GLA (training and prefill).

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``.
        v: values ``[B, T, H, V]``.
        g: log-space decay ``[B, T, H, K]``, ``g <= 0`` (e.g. ``logsigmoid(x) / 16``).
        scale: query scale; defaults to ``K ** -0.5``.
        initial_state: state ``[B, H, K, V]`` to continue from (zeros if None).
        output_final_state: also return the state after the last token.
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"naive"`` (see ``kernels.backend``).
        chunk_size: chunk length of the ``torch`` backend; T need not be a multiple of it.

    Returns:
        ``(o, final_state)``: ``o [B, T, H, V]`` in the dtype of v (computed in fp32);
        ``final_state [B, H, K, V]`` in fp32 (fp64 for fp64 inputs), or None unless requested.
    """
    _check_inputs(q, k, v, g, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    resolved = resolve_backend(backend, q, k, v, g, initial_state, family="gla")
    if resolved == "naive":
        return naive_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state)
    return chunk_gla_torch(q, k, v, g, scale, initial_state, output_final_state, chunk_size=chunk_size)


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
    _check_inputs(q, k, v, g, initial_state)
    resolved = resolve_backend(backend, q, k, v, g, initial_state, family="gla")
    if resolved == "naive":
        return naive_recurrent_gla(q, k, v, g, scale, initial_state, output_final_state)
    return fused_recurrent_gla_torch(q, k, v, g, scale, initial_state, output_final_state)


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, initial_state: torch.Tensor | None
) -> None:
    """Raise ValueError, quoting the shapes, unless q/k/g are [B, T, H, K], v [B, T, H, V], state [B, H, K, V]."""
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, D], got {name}.shape={tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    B, T, H, K = q.shape
    for name, x in (("k", k), ("g", g)):
        if tuple(x.shape) != (B, T, H, K):
            raise ValueError(f"{name}.shape={tuple(x.shape)} must equal q.shape={(B, T, H, K)} ([B, T, H, K])")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v.shape={tuple(v.shape)} must start with [B, T, H]={[B, T, H]} of q.shape={(B, T, H, K)}")
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got T={T} (q.shape={(B, T, H, K)})")
    if initial_state is not None:
        V = v.shape[-1]
        if tuple(initial_state.shape) != (B, H, K, V):
            raise ValueError(
                f"initial_state.shape={tuple(initial_state.shape)} must be [B, H, K, V]={[B, H, K, V]} "
                f"for q.shape={(B, T, H, K)}, v.shape={tuple(v.shape)}"
            )
