"""Public gated DeltaProduct ops (family ``gated_delta_product``): :func:`chunk_gated_delta_product` (training /
prefill) and :func:`fused_recurrent_gated_delta_product` (decode), in fla's layout and argument order.

A token's ``n`` Householder steps are ``n`` consecutive steps of the gated delta rule on a sequence ``n`` times
longer: the token's decay on its first step (``g = 0`` on the others), its query on its last step (zero queries
elsewhere), and its output read from that last step. So the ``torch`` and ``triton`` backends run the gated
delta rule's own chunked / recurrent kernels (forward and backward) on the interleaved sequence; ``naive`` is
this family's own per-step loop, the oracle the tests hold the others to.
"""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.delta_rule.ops import (
    chunk_delta_rule,
    chunk_gated_delta_rule,
    fused_recurrent_delta_rule,
    fused_recurrent_gated_delta_rule,
)
from kernels.gated_delta_product.naive import naive_recurrent_gated_delta_product
from kernels.utils import check_inputs, without_autocast

__all__ = ["chunk_gated_delta_product", "fused_recurrent_gated_delta_product"]


@without_autocast
def chunk_gated_delta_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    num_householder: int | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel gated DeltaProduct (Siems et al. 2025, arXiv 2502.10297; training and prefill).

    Per token: ``S <- exp(g_t) S``, then for its j = 1..n keys ``S <- S + beta_j k_j (v_j - S^T k_j)^T`` (a
    product of n generalized Householder transitions), and ``o_t = S^T (scale q_t)``.

    Args:
        q: queries ``[B, T, H, K]``.
        k: keys ``[B, T*n, H, K]``, token t's j-th key at ``t*n + j``, L2-normalized by the caller.
        v: values ``[B, T*n, H, V]``, laid out as k.
        g: log decay ``[B, T, H]`` (``<= 0``), one per token; None for DeltaProduct without decay.
        beta: write strengths ``[B, T*n, H]``, in (0, 1), or (0, 2) for negative eigenvalues.
        num_householder: n; None infers it from ``k.shape[1] // q.shape[1]``.
        scale, initial_state, output_final_state, backend, chunk_size: as ``chunk_gated_delta_rule``.
        cu_seqlens: ``[N + 1]`` offsets of the packed sequences in tokens (of q), fla's convention.

    Returns:
        ``(o [B, T, H, V]`` in the dtype of v, ``final_state [N, H, K, V]`` in fp32 or None).
    """
    return _run(
        q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens
    )


@without_autocast
def fused_recurrent_gated_delta_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    num_householder: int | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step gated DeltaProduct (decode). Same arguments and returns as :func:`chunk_gated_delta_product`
    (no ``chunk_size``)."""
    return _run(q, k, v, g, beta, num_householder, scale, initial_state, output_final_state, backend, None, cu_seqlens)


def _run(q, k, v, g, beta, n, scale, initial_state, output_final_state, backend, chunk_size, cu_seqlens):
    for name, x in (("q", q), ("k", k)):
        if x.ndim != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, K], got {name}.shape={tuple(x.shape)}")
    B, T, H, K = q.shape
    if n is None:
        n = k.shape[1] // max(T, 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_householder must be a positive int, got {n!r}")
    if k.shape[1] != T * n:
        raise ValueError(
            f"k.shape={tuple(k.shape)} must be [B, T*n, H, K]={[B, T * n, H, K]} for q.shape={tuple(q.shape)} "
            f"and num_householder={n}"
        )
    if cu_seqlens is not None:
        check_inputs(q, q, q, cu_seqlens=cu_seqlens)  # offsets in tokens (of q), as fla counts them
    step_seqlens = None if cu_seqlens is None else cu_seqlens * n
    # the interleaved layout, where every tensor has T*n steps: the token's query on its last step
    q_steps = torch.cat([q.new_zeros(B, T, n - 1, H, K), q[:, :, None]], dim=2).flatten(1, 2)
    check_inputs(q_steps, k, v, beta=(beta, "BTH"), initial_state=initial_state, cu_seqlens=step_seqlens)
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g.shape={tuple(g.shape)} must be [B, T, H]={[B, T, H]} for q.shape={tuple(q.shape)}")
    resolved = resolve_backend(backend, q, k, v, g, beta, initial_state, family="gated_delta_product")
    if resolved == "naive":
        if cu_seqlens is not None:
            return _naive_varlen(q, k, v, g, beta, n, scale, initial_state, output_final_state, cu_seqlens)
        return naive_recurrent_gated_delta_product(q, k, v, g, beta, n, scale, initial_state, output_final_state)
    kwargs = {"scale": scale, "initial_state": initial_state, "output_final_state": output_final_state}
    kwargs |= {"backend": resolved, "cu_seqlens": step_seqlens}
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    if g is None:
        op = chunk_delta_rule if chunk_size is not None else fused_recurrent_delta_rule
        o, state = op(q_steps, k, v, beta, **kwargs)
    else:
        op = chunk_gated_delta_rule if chunk_size is not None else fused_recurrent_gated_delta_rule
        g_steps = torch.cat([g[:, :, None], g.new_zeros(B, T, n - 1, H)], dim=2).flatten(1, 2)  # decay first
        o, state = op(q_steps, k, v, g_steps, beta, **kwargs)
    return o.unflatten(1, (T, n))[:, :, -1], state


def _naive_varlen(q, k, v, g, beta, n, scale, initial_state, output_final_state, cu_seqlens):
    """The naive loop sequence by sequence (no state crosses a boundary): tokens sliced by `cu_seqlens`, steps by
    n times it; an empty sequence leaves its state as it came in."""
    offsets, outs, finals = cu_seqlens.tolist(), [], []
    acc = torch.promote_types(q.dtype, torch.float32)
    for i, (a, b) in enumerate(zip(offsets, offsets[1:], strict=False)):
        h0 = None if initial_state is None else initial_state[i : i + 1]
        if a == b:
            zero = torch.zeros(1, q.shape[2], q.shape[3], v.shape[-1], dtype=acc, device=q.device)
            finals.append(zero if h0 is None else h0.to(acc))
            continue
        gs = None if g is None else g[:, a:b]
        k_, v_, beta_ = (x[:, a * n : b * n] for x in (k, v, beta))
        o, s = naive_recurrent_gated_delta_product(q[:, a:b], k_, v_, gs, beta_, n, scale, h0, True)
        outs.append(o)
        finals.append(s)
    o = torch.cat(outs, dim=1) if outs else v.new_zeros(*q.shape[:3], v.shape[-1])
    return o, (torch.cat(finals, dim=0) if output_final_state else None)


def fla_chunk_gated_delta_product(q, k, v, g, beta, **kwargs):
    """fla's op with `num_householder` taken from the shapes, as ours does (for tests/kernels/test_against_fla)."""
    from fla.ops.gated_delta_product import chunk_gated_delta_product as fla_op

    return fla_op(q, k, v, g, beta, k.shape[1] // q.shape[1], **kwargs)
