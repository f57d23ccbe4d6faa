"""Public RWKV-7 ops (family ``rwkv7``): :func:`chunk_rwkv7` and :func:`fused_recurrent_rwkv7`, the DPLR delta rule
(``kernels.dplr_delta_rule``) with RWKV's names and defaults: ``r`` the receptance (the query), ``w`` the log
decay per key channel, and no query scale (``scale=1.0``)."""

from __future__ import annotations

import torch

from kernels.dplr_delta_rule.ops import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule

__all__ = ["chunk_rwkv7", "fused_recurrent_rwkv7"]


def chunk_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RWKV-7's time mix recurrence (Peng et al. 2025, "RWKV-7 Goose", arXiv 2503.14456), chunkwise-parallel:

    ``S_t = (Diag(exp(w_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T (scale r_t)``

    with the layer passing ``a = -kk`` and ``b = kk * a_gate`` (kk the normalized removal key, a_gate the
    in-context learning rate), fla's convention. Shapes: r, w, k, a, b ``[B, T, H, K]`` (w: log decay, <= 0);
    v ``[B, T, H, V]``; states ``[N, H, K, V]``. Other arguments and returns as ``chunk_dplr_delta_rule``."""
    return chunk_dplr_delta_rule(
        r, k, v, a, b, w, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens
    )


def fused_recurrent_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step RWKV-7 (decode); arguments and returns as :func:`chunk_rwkv7` (no ``chunk_size``)."""
    return fused_recurrent_dplr_delta_rule(
        r, k, v, a, b, w, scale, initial_state, output_final_state, backend, cu_seqlens
    )
