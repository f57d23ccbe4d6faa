"""RWKV-5/6 in plain PyTorch: a chunkwise-parallel form for training/prefill and a step loop for decode.

Both are differentiable by autograd and accumulate in fp32 (fp64 for fp64 inputs). The chunked
form never evaluates ``exp`` of a positive number, so it stays finite under arbitrarily strong
decay; see README.md in this folder for the derivation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.utils import decayed_outer_update

__all__ = ["chunk_rwkv6_torch", "fused_recurrent_rwkv6_torch"]

SUB_CHUNK = 8
"""Sub-block size inside a chunk is ``gcd(chunk_size, SUB_CHUNK)``: token pairs inside a sub-block are
scored pairwise (cost ~ sub per token), sub-blocks are combined through K x V states (cost ~ 1 / sub)."""

SLAB_NUMEL = 1 << 18
"""Chunks are processed in slabs whose ``[B, H, L, C / sub, K, V]`` sub-block states hold about this many
elements (at least one chunk): temporaries stay in cache, worth ~2x on CPU over all chunks at once."""


def chunk_rwkv6_torch(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel RWKV-6. Same contract as ``naive_recurrent_rwkv6``.

    Shapes: r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial_state ``[B, H, K, V]``.
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[B, H, K, V]`` in fp32
    (fp64 for fp64 inputs), or None unless ``output_final_state``.
    T need not be a multiple of ``chunk_size``: the tail is padded with r = k = v = 0 and w = 0,
    which leaves the state unchanged, and the padded outputs are dropped.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(r.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    N = -(-T // C)  # number of chunks
    s = math.gcd(C, SUB_CHUNK)  # sub-block size
    M = C // s  # sub-blocks per chunk
    pad = N * C - T

    def to_blocks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, D) -> (B, H, N, M, s, D)
        x = x.to(acc).transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, N, M, s, x.shape[-1])

    r, k, v, w = (to_blocks(x) for x in (r, k, v, w))
    r = r * scale

    # decays relative to each sub-block, all exponents <= 0
    W = w.cumsum(-2)  # (B, H, N, M, s, K) inclusive cumulative log decay inside each sub-block
    W_end = W[..., -1:, :]  # (B, H, N, M, 1, K) whole sub-block
    r_in = r * _exclusive(W, -2).exp()  # r_i decayed from the sub-block start up to token i - 1
    k_out = k * (W_end - W).exp()  # k_j decayed from token j + 1 to the sub-block end
    block_decay = W_end.exp().transpose(-1, -2)  # (B, H, N, M, K, 1)
    Wc = W_end.squeeze(-2).cumsum(-2)  # (B, H, N, M, K) cumulative decay over the chunk's sub-blocks
    to_block = _exclusive(Wc, -2).exp().unsqueeze(-2)  # (B, H, N, M, 1, K) chunk start -> sub-block start
    chunk_decay = Wc[..., -1, :].exp().unsqueeze(-1)  # (B, H, N, K, 1)

    # 1. inside sub-blocks: the bonus on the diagonal plus the strictly causal pairs, all at once
    o = _sub_block_scores(r, k, w, u.to(acc)[:, None, None, None, :]) @ v  # (B, H, N, M, s, V)

    # 2. across the sub-blocks of a chunk: sub-block states P_a (from the chunk start, zero state in);
    #    all chunks of a slab at once, a scan over the M sub-blocks
    L = max(1, SLAB_NUMEL // (B * H * M * K * V))  # chunks per slab
    o_blocks, chunk_kv = [], []
    # split/unbind rather than slicing, so the backward assembles each gradient once (linear in T)
    slabs = zip(*(x.split(L, dim=2) for x in (k_out, v, block_decay, r_in)), strict=True)
    for k_slab, v_slab, decay_slab, r_slab in slabs:
        kv = torch.einsum("bhlmsk,bhlmsv->bhlmkv", k_slab, v_slab)  # (B, H, L, M, K, V)
        P = [torch.zeros_like(kv[:, :, :, 0])]  # (B, H, L, K, V) each
        for kv_a, decay_a in zip(kv.unbind(3), decay_slab.unbind(3), strict=True):
            P.append(torch.addcmul(kv_a, decay_a, P[-1]))
        chunk_kv.append(P.pop())  # the whole chunk's contribution to the state
        o_blocks.append(r_slab @ torch.stack(P, dim=3))  # (B, H, L, M, s, V)
    o = o + torch.cat(o_blocks, dim=2)
    chunk_kv = torch.cat(chunk_kv, dim=2)  # (B, H, N, K, V)

    # 3. across chunks: the state entering each chunk; only this recurrence loops over all chunks
    S = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    states = []
    for kv_n, decay_n in zip(chunk_kv.unbind(2), chunk_decay.unbind(2), strict=True):
        states.append(S)
        S = torch.addcmul(kv_n, decay_n, S)
    r_dec = (r_in * to_block).flatten(-3, -2)  # (B, H, N, C, K) r_i decayed from the chunk start to i - 1
    o = o.flatten(-3, -2) + r_dec @ torch.stack(states, dim=2)  # (B, H, N, C, V)

    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def _exclusive(cumsum: torch.Tensor, dim: int) -> torch.Tensor:
    """Exclusive version of an inclusive cumulative sum along ``dim`` (< 0): shifted by one, 0 first."""
    shifted = cumsum.narrow(dim, 0, cumsum.shape[dim] - 1)
    return F.pad(shifted, (0, 0) * (-dim - 1) + (1, 0))


def _sub_block_scores(r: torch.Tensor, k: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Scores inside each sub-block: ``A[i, i] = sum_k r_ik u_k k_ik`` (the bonus) and, for ``j < i``,
    ``A[i, j] = sum_k r_ik k_jk exp(w_{j+1,k} + ... + w_{i-1,k})`` (0 above the diagonal).

    r, k, w: ``(..., s, K)``, u broadcastable to them -> A ``(..., s, s)``. The decay of a
    pair is a product of per-step factors ``exp(w) <= 1`` (1 for neighbours), built one sub-diagonal at
    a time: no ``exp`` of a difference, so nothing can overflow and strong decay just underflows to 0.
    """
    s = r.shape[-2]
    A = (r * u * k).sum(-1).diag_embed()  # bonus: the current token, weighted by u instead of decayed
    if s > 1:
        A = A + (r[..., 1:, :] * k[..., :-1, :]).sum(-1).diag_embed(-1)  # j = i - 1: no decay in between
    step = w.exp()
    decay = None  # (..., s - d, K): exp(w_{i-d+1} + ... + w_{i-1}) for i = d .. s - 1
    for d in range(2, s):
        decay = step[..., 1 : s - 1, :] if decay is None else decay[..., 1:, :] * step[..., 1 : s - d + 1, :]
        A = A + (r[..., d:, :] * k[..., : s - d, :] * decay).sum(-1).diag_embed(-d)
    return A


def fused_recurrent_rwkv6_torch(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step RWKV-6 for decode (T = 1 or a few tokens). Same contract as ``chunk_rwkv6_torch``."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(r.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    r = r.to(acc) * scale
    k, v, u = k.to(acc), v.to(acc), u.to(acc)
    decay = w.to(acc).exp().unsqueeze(-1)  # (B, T, H, K, 1)
    bonus = (r * u * k).sum(-1, keepdim=True)  # (B, T, H, 1) r_t diag(u) k_t^T
    S = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = r.new_empty(B, T, H, V)
    for t in range(T):
        o[:, t] = (r[:, t, :, None, :] @ S).squeeze(-2) + bonus[:, t] * v[:, t]  # (B, H, V)
        S = decayed_outer_update(S, decay[:, t], k[:, t], v[:, t])  # (B, H, K, V)
    return o.to(out_dtype), (S if output_final_state else None)
