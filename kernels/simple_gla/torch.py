"""Simple GLA in plain PyTorch: a chunkwise-parallel form for training/prefill and a step loop for decode.

Both are differentiable by autograd and accumulate in fp32 (fp64 for fp64 inputs). The gate is one
scalar per head and step, so the intra-chunk decay is a ``[C, C]`` matrix ``exp(G_i - G_j)`` computed
pairwise in log space: ``exp`` never sees a positive number, so any decay stays finite.
See README.md in this folder for the derivation.
"""

from __future__ import annotations

import torch

from kernels.utils import decayed_outer_update

__all__ = ["chunk_simple_gla_torch", "fused_recurrent_simple_gla_torch"]


def chunk_simple_gla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel simple GLA. Same contract as ``naive_recurrent_simple_gla``.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g ``[B, T, H]`` or g_gamma ``[H]`` or neither;
    initial_state ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` (dtype of v) and the final state
    ``[B, H, K, V]`` in fp32 (fp64 for fp64 inputs), or None unless ``output_final_state``.
    T need not be a multiple of ``chunk_size``: the tail is padded with k = v = 0 and g = 0, which
    leaves the state unchanged, and the padded outputs are dropped.
    """
    if g is not None and g_gamma is not None:
        raise ValueError("pass either g [B, T, H] or g_gamma [H], not both")
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    N = -(-T // C)  # number of chunks
    # (B * H * N, C, D): every chunk of every head is one matrix of a batched matmul
    q, k, v = (_to_chunks(x, N, C, acc).view(-1, C, x.shape[-1]) for x in (q, k, v))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)

    # intra-chunk scores, decayed and causal (in place on fresh matmul outputs: autograd-safe, fewer copies)
    A = torch.bmm(q, k.transpose(1, 2))  # (B * H * N, C, C)
    if g is None and g_gamma is None:  # plain linear attention: no exp at all
        A.tril_()
        kv = torch.bmm(k.transpose(1, 2), v).view(B, H, N, K, V)  # each chunk's k^T v
        decay = None
    else:
        if g is not None:
            G = _to_chunks(g, N, C, acc).cumsum(-1)  # (B, H, N, C) cumulative log decay, non-increasing
            D = _decay_matrix(G)  # (B, H, N, C, C)
        else:
            G = _gamma_cumsum(g_gamma.to(acc), T, N, C)  # (1, H, N, C)
            D = _decay_matrix(G[:, :, :1])  # (1, H, 1, C, C): the same for every chunk
        A.view(B, -1, N, C, C).mul_(D)
        G_last = G[..., -1:]  # (., H, N, 1)
        k_end = k.view(B, H, N, C, K) * (G_last - G).exp().unsqueeze(-1)  # keys decayed to the chunk end
        kv = torch.bmm(k_end.view(-1, C, K).transpose(1, 2), v).view(B, H, N, K, V)
        decay = G_last.exp().unsqueeze(-1)  # (., H, N, 1, 1) whole-chunk decay

    # inter-chunk: the state entering each chunk; only this K x V recurrence loops over chunks
    # (unbind, not kv[:, :, n]: its backward is one stack instead of N zero-filled full-size gradients)
    kvs, decays = kv.unbind(2), (None,) * N if decay is None else decay.unbind(2)
    states = []
    for kv_n, decay_n in zip(kvs, decays, strict=True):
        states.append(S)
        S = S + kv_n if decay_n is None else torch.addcmul(kv_n, decay_n, S)
    o = torch.bmm(q, torch.stack(states, dim=2).view(-1, K, V))  # (B * H * N, C, V)
    if decay is not None:  # queries see the entering state decayed from the chunk start
        o.view(B, -1, N, C, V).mul_(G.exp().unsqueeze(-1))
    o.baddbmm_(A, v, beta=scale, alpha=scale)  # scale * (inter + A v)
    o = o.view(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def _to_chunks(x: torch.Tensor, N: int, C: int, acc: torch.dtype) -> torch.Tensor:
    """``(B, T, H, *D) -> (B, H, N, C, *D)`` contiguous in dtype ``acc``, zero-padded along T to ``N * C``."""
    B, T, H = x.shape[:3]
    out = x.new_empty(B, H, N * C, *x.shape[3:], dtype=acc)
    out[:, :, :T] = x.transpose(1, 2)  # one pass: transpose and cast
    out[:, :, T:] = 0
    return out.view(B, H, N, C, *x.shape[3:])


def _gamma_cumsum(g_gamma: torch.Tensor, T: int, N: int, C: int) -> torch.Tensor:
    """Cumulative log decay ``(1, H, N, C)`` of a constant gate, ``G[n, i] = g_gamma * (i + 1)``, except in the
    padded tail of the last chunk, which does not decay (g = 0 there, as for a data-dependent gate)."""
    steps = torch.arange(1, C + 1, dtype=g_gamma.dtype, device=g_gamma.device).repeat(N, 1)  # (N, C)
    steps[-1].clamp_(max=T - (N - 1) * C)
    return (g_gamma[:, None, None] * steps).unsqueeze(0)


def _decay_matrix(G: torch.Tensor) -> torch.Tensor:
    """``D[..., i, j] = exp(G_i - G_j)`` for ``j <= i``, 0 above the diagonal; G ``(..., C)`` -> ``(..., C, C)``.

    Above the diagonal ``G_i - G_j`` can be hugely positive: ``exp`` would give inf and masking it
    afterwards ``inf * 0 = nan`` (also in the backward). So the exponent is masked *before* ``exp``, to
    ``-inf``, whose ``exp`` is exactly 0 with a zero gradient; below the diagonal it is ``<= 0`` for
    ``g <= 0``, and it is never split into ``exp(G_i) * exp(-G_j)``, which overflows under strong decay.
    """
    C = G.shape[-1]
    above = torch.ones(C, C, dtype=torch.bool, device=G.device).triu(1)
    return (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill_(above, float("-inf")).exp_()


def fused_recurrent_simple_gla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step simple GLA for decode (T = 1 or a few tokens). Same contract as ``chunk_simple_gla_torch``."""
    if g is not None and g_gamma is not None:
        raise ValueError("pass either g [B, T, H] or g_gamma [H], not both")
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q = q.to(acc) * scale
    k, v = k.to(acc), v.to(acc)
    decay = None  # (B, T, H, 1, 1) per-step state decay
    if g is not None:
        decay = g.to(acc).exp()[..., None, None]
    elif g_gamma is not None:
        decay = g_gamma.to(acc).exp()[:, None, None].expand(B, T, H, 1, 1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        S = decayed_outer_update(S, None if decay is None else decay[:, t], k[:, t], v[:, t])  # (B, H, K, V)
        o[:, t] = (q[:, t, :, None, :] @ S).squeeze(-2)  # (B, H, V)
    return o.to(out_dtype), (S if output_final_state else None)
