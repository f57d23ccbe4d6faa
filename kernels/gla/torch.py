"""GLA in plain PyTorch: a chunkwise-parallel form for training/prefill and a step loop for decode.

Both are differentiable by autograd and accumulate in fp32 (fp64 for fp64 inputs). The chunked
form never evaluates ``exp`` of a positive number, so it stays finite under arbitrarily strong
decay; see README.md in this folder for the derivation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.utils import decayed_outer_update

__all__ = ["chunk_gla_torch", "fused_recurrent_gla_torch"]

FAST_SPAN = 30.0
"""A chunk whose cumulative decay stays above ``-FAST_SPAN`` in every channel uses the single-reference
intra-chunk form; ``exp(30) ~ 1e13`` leaves fp32 ample headroom (overflow is at ``exp(88)``)."""

SLAB_TOKENS = 512
"""Sequences longer than this run slab by slab (rounded to whole chunks), the state carried between slabs."""

SUB_CHUNK = 8
"""Secondary split inside a chunk: the sub-block size is ``gcd(chunk_size, SUB_CHUNK)``. The two big
temporaries are ``[C / sub, C, K]`` and ``[sub, sub, K]`` per chunk and head; 8 balances them for C = 64."""


def chunk_gla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel GLA. Same contract as ``naive_recurrent_gla``.

    Shapes: q, k, g ``[B, T, H, K]``; v ``[B, T, H, V]``; initial_state ``[B, H, K, V]``.
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[B, H, K, V]`` in fp32
    (fp64 for fp64 inputs), or None unless ``output_final_state``.
    T need not be a multiple of ``chunk_size``: the tail is padded with k = v = 0 and g = 0,
    which leaves the state unchanged, and the padded outputs are dropped.
    """
    T, K = q.shape[1], q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    # Long sequences run in slabs of whole chunks with the state carried over (exact): the per-slab
    # temporaries then stay in cache, which keeps the time linear in T on CPU.
    slab = max(chunk_size, SLAB_TOKENS // chunk_size * chunk_size)
    if slab >= T:
        return _chunk_gla_slab(q, k, v, g, scale, initial_state, output_final_state, chunk_size)
    # split (not slicing) so that the backward assembles each input's gradient once, not once per slab
    outs, state = [], initial_state
    for qs, ks, vs, gs in zip(*(x.split(slab, dim=1) for x in (q, k, v, g)), strict=True):
        o, state = _chunk_gla_slab(qs, ks, vs, gs, scale, state, True, chunk_size)
        outs.append(o)
    return torch.cat(outs, dim=1), (state if output_final_state else None)


def _chunk_gla_slab(q, k, v, g, scale: float, initial_state, output_final_state: bool, chunk_size: int):
    """The chunked algorithm on one slab of the sequence; arguments as in :func:`chunk_gla_torch`."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    C = chunk_size
    N = -(-T // C)  # number of chunks
    pad = N * C - T

    def to_chunks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, D) -> (B, H, N, C, D)
        x = x.to(acc).transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, N, C, x.shape[-1])

    q, k, v, g = (to_chunks(x) for x in (q, k, v, g))
    G = g.cumsum(-2)  # (B, H, N, C, K) cumulative log decay inside each chunk, non-increasing
    G_last = G[..., -1:, :]  # (B, H, N, 1, K)
    decay_in = G.exp()  # (B, H, N, C, K) decay from the chunk start, <= 1
    q_decayed = (q * scale) * decay_in

    if bool((-G_last).amax(-1).le(FAST_SPAN).all()):
        # every chunk decays mildly: single-reference intra-chunk form (see _intra_chunk_scores), and
        # the chunk's state contribution reuses k * exp(-G), times exp(G_last) per channel
        k_up = k / decay_in  # (B, H, N, C, K), <= exp(FAST_SPAN)
        A = (q_decayed @ k_up.transpose(-1, -2)).tril()  # (B, H, N, C, C)
        kv = G_last.exp().transpose(-1, -2) * (k_up.transpose(-1, -2) @ v)  # (B, H, N, K, V)
    else:
        A = _intra_chunk_scores(q * scale, k, G, q_decayed, math.gcd(C, SUB_CHUNK))
        kv = (k * (G_last - G).exp()).transpose(-1, -2) @ v  # (B, H, N, K, V) chunk's contribution
    o = A @ v  # (B, H, N, C, V) intra-chunk

    # inter-chunk: the state entering each chunk; only this recurrence loops over chunks
    decay = G_last.exp().transpose(-1, -2)  # (B, H, N, K, 1) whole-chunk decay
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    states = []
    for kv_n, decay_n in zip(kv.unbind(2), decay.unbind(2), strict=True):  # unbind: one backward gather, not N
        states.append(S)
        S = torch.addcmul(kv_n, decay_n, S)
    o = (q_decayed @ torch.stack(states, dim=2)).add_(o)  # (B, H, N, C, V)

    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def _intra_chunk_scores(
    q: torch.Tensor, k: torch.Tensor, G: torch.Tensor, q_decayed: torch.Tensor, sub: int
) -> torch.Tensor:
    """Decayed causal scores ``A[i, j] = sum_k q_ik k_jk exp(G_ik - G_jk)`` for ``j <= i`` (0 above).

    Chunks whose total decay stays within ``FAST_SPAN`` (the common case: a GLA gate of
    ``logsigmoid(x) / 16`` decays ~0.04 per step) take the single-reference form
    ``(q * exp(G)) (k * exp(-G))^T``: two matmul operands, exact, and ``exp(-G) <= exp(FAST_SPAN)``
    cannot overflow. Chunks with stronger decay go through :func:`_stable_intra_chunk_scores`.
    """
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    span = -G[..., -1, :].amin(-1)  # (...) largest total decay of a channel over the chunk
    fast = span <= FAST_SPAN
    if bool(fast.all()):
        return (q_decayed @ (k * (-G).exp()).transpose(-1, -2)) * causal
    if not bool(fast.any()):
        return _stable_intra_chunk_scores(q, k, G, sub)
    A = q.new_empty(*q.shape[:-1], C)
    kf, Gf = k[fast], G[fast]
    A[fast] = (q_decayed[fast] @ (kf * (-Gf).exp()).transpose(-1, -2)) * causal
    A[~fast] = _stable_intra_chunk_scores(q[~fast], k[~fast], G[~fast], sub)
    return A


def _stable_intra_chunk_scores(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor, sub: int) -> torch.Tensor:
    """Decayed causal scores ``A[i, j] = sum_k q_ik k_jk exp(G_ik - G_jk)`` for ``j <= i`` (0 above).

    q, k, G: ``(..., C, K)`` -> A ``(..., C, C)``. The chunk is split into ``M = C / sub`` sub-blocks.
    For query block ``a`` and an earlier key block ``b < a``, with ``r`` the first row of block a and
    ``e`` the last row of block b, the decay factors as
    ``exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_e) * exp(G_e - G_j)``: every exponent is <= 0 and
    only the small middle factor (one K-vector per block pair) depends on both blocks.
    Diagonal blocks are computed pairwise in log space. Exponents that the causal mask discards are
    clamped to <= 0 before ``exp`` (their finite products are then zeroed by the mask), so that no
    ``exp(+large) = inf`` and no ``inf * 0 = nan`` can appear, forward or backward.
    """
    C, K = q.shape[-2:]
    M = C // sub
    qs, ks, Gs = (x.unflatten(-2, (M, sub)) for x in (q, k, G))  # (..., M, sub, K)
    G_first, G_last = Gs[..., :1, :], Gs[..., -1:, :]  # (..., M, 1, K) first / last row of each block

    # off-diagonal blocks (b < a)
    q_ref = qs * (Gs - G_first).exp()  # (..., M, sub, K)
    k_ref = ks * (G_last - Gs).exp()  # (..., M, sub, K)
    between = (G_first - G_last.transpose(-2, -3)).clamp(max=0).exp()  # (..., M(a), M(b), K)
    k_pair = (k_ref.unsqueeze(-4) * between.unsqueeze(-2)).flatten(-3, -2)  # (..., M(a), C, K)
    A = (q_ref @ k_pair.transpose(-1, -2)).unflatten(-1, (M, sub))  # (..., M(a), sub, M(b), sub)
    A = A * torch.ones(M, M, dtype=torch.bool, device=q.device).tril(-1)[:, None, :, None]

    # diagonal blocks: pairwise decays in log space
    w = (Gs.unsqueeze(-2) - Gs.unsqueeze(-3)).clamp(max=0)  # (..., M, i, j, K)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or G.requires_grad):
        A_diag = (qs.unsqueeze(-2) * ks.unsqueeze(-3) * w.exp()).sum(-1)  # (..., M, sub, sub)
    else:  # inference: same math in place, it saves most of the time of this function
        A_diag = w.exp_().mul_(ks.unsqueeze(-3)).mul_(qs.unsqueeze(-2)).sum(-1)
    A_diag = A_diag * torch.ones(sub, sub, dtype=torch.bool, device=q.device).tril()
    A = A + A_diag.unsqueeze(-2) * torch.eye(M, dtype=A.dtype, device=q.device)[:, None, :, None]
    return A.flatten(-4, -3).flatten(-2, -1)  # (..., C, C)


def fused_recurrent_gla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step GLA for decode (T = 1 or a few tokens). Same contract as ``chunk_gla_torch``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q = q.to(acc) * scale
    k, v = k.to(acc), v.to(acc)
    decay = g.to(acc).exp().unsqueeze(-1)  # (B, T, H, K, 1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        S = decayed_outer_update(S, decay[:, t], k[:, t], v[:, t])  # (B, H, K, V)
        o[:, t] = (q[:, t, :, None, :] @ S).squeeze(-2)  # (B, H, V)
    return o.to(out_dtype), (S if output_final_state else None)
