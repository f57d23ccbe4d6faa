"""Public delta rule ops (families ``delta_rule`` and ``gated_delta_rule``): :func:`chunk_delta_rule` /
:func:`chunk_gated_delta_rule` (training / prefill) and :func:`fused_recurrent_delta_rule` /
:func:`fused_recurrent_gated_delta_rule` (decode).

All four share one dispatch (the delta rule is the gated code with ``g=None``): input checks, one backend
resolution (``kernels.backend``), then ``naive.py``, ``torch.py`` or ``triton/`` (imported only when that
backend runs). The recurrence is in the package docstring.
"""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.delta_rule.naive import naive_recurrent_gated_delta_rule
from kernels.delta_rule.torch import (
    chunk_gated_delta_rule_torch,
    fused_recurrent_gated_delta_rule_torch,
)
from kernels.utils import check_inputs, run_varlen, without_autocast

__all__ = [
    "chunk_delta_rule",
    "fused_recurrent_delta_rule",
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
]


@without_autocast
def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel delta rule (DeltaNet; training and prefill).

    ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``, L2-normalized along K by the caller.
        v: values ``[B, T, H, V]``.
        beta: write strengths ``[B, T, H]`` in (0, 1) (a sigmoid output).
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
    return _run(q, k, v, None, beta, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens)


@without_autocast
def fused_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step delta rule (decode: T = 1 or a few tokens). Same arguments and returns as
    :func:`chunk_delta_rule` (no ``chunk_size``).

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; beta ``[B, T, H]``; initial_state ``[N, H, K, V]``;
    returns ``o [B, T, H, V]`` and ``final_state [N, H, K, V]`` (fp32) or None.
    """
    return _run(q, k, v, None, beta, scale, initial_state, output_final_state, backend, None, cu_seqlens)


@without_autocast
def chunk_gated_delta_rule(
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
    """Chunkwise-parallel gated delta rule (Gated DeltaNet; training and prefill).

    ``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T, H, K]``, L2-normalized along K by the caller.
        v: values ``[B, T, H, V]``.
        g: log-space decay ``[B, T, H]``, ``g <= 0`` (one scalar per head and token).
        beta: write strengths ``[B, T, H]`` in (0, 1) (a sigmoid output).
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
    if g is None:
        raise ValueError("chunk_gated_delta_rule needs g [B, T, H]; for no decay use chunk_delta_rule")
    return _run(q, k, v, g, beta, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens)


@without_autocast
def fused_recurrent_gated_delta_rule(
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
    """Step-by-step gated delta rule (decode: T = 1 or a few tokens). Same arguments and returns as
    :func:`chunk_gated_delta_rule` (no ``chunk_size``).

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g, beta ``[B, T, H]``; initial_state ``[N, H, K, V]``;
    returns ``o [B, T, H, V]`` and ``final_state [N, H, K, V]`` (fp32) or None.
    """
    if g is None:
        raise ValueError(
            "fused_recurrent_gated_delta_rule needs g [B, T, H]; without decay use fused_recurrent_delta_rule"
        )
    return _run(q, k, v, g, beta, scale, initial_state, output_final_state, backend, None, cu_seqlens)


def _run(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    backend: str,
    chunk_size: int | None,
    cu_seqlens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shared dispatch: checks, backend resolution, varlen. ``g=None`` is the delta rule; ``chunk_size=None``
    picks the step loop (fused_recurrent), an int the chunked form."""
    check_inputs(q, k, v, beta=(beta, "BTH"), g=(g, "BTH"), initial_state=initial_state, cu_seqlens=cu_seqlens)
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    family = "delta_rule" if g is None else "gated_delta_rule"
    resolved = resolve_backend(backend, q, k, v, g, beta, initial_state, family=family)
    if resolved == "triton":  # imported lazily: `import kernels` never imports Triton
        from kernels.delta_rule.triton import chunk_gated_delta_rule_triton, fused_recurrent_gated_delta_rule_triton

        if chunk_size is None:
            return fused_recurrent_gated_delta_rule_triton(
                q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens
            )
        return chunk_gated_delta_rule_triton(
            q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens
        )
    if resolved == "naive":
        fn, extra = naive_recurrent_gated_delta_rule, {}
    elif chunk_size is None:
        fn, extra = fused_recurrent_gated_delta_rule_torch, {}
    else:
        fn, extra = chunk_gated_delta_rule_torch, {"chunk_size": chunk_size}
    per_token = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    if cu_seqlens is not None:
        return run_varlen(fn, cu_seqlens, per_token, initial_state, output_final_state, scale=scale, **extra)
    return fn(**per_token, scale=scale, initial_state=initial_state, output_final_state=output_final_state, **extra)
