"""Chunkwise DPLR delta rule in Triton: forward and backward kernels behind one ``torch.autograd.Function``.

Per sequence and head, time is cut into chunks of ``BT`` tokens (never across a sequence boundary; see
``kernels/triton_utils.py``). Inside a chunk ``G`` / ``G'`` are the inclusive / exclusive cumsums of ``gk`` (fp32,
per key channel), ``L`` the last token and ``S`` the state entering the chunk. With the pair terms ``A_qk, A_qb,
A_ak, A_ab`` of ``intra.py`` (``scale`` in ``A_qk``, ``A_qb``) and ``W, U`` of ``wy.py``::

    u      = U + W S                                                   (what the low-rank term reads, per token)
    o      = scale (q * exp(G)) S + A_qk V + A_qb u
    S_next = exp(G_L) S + (K * exp(G_L - G))^T V + (B * exp(G_L - G))^T u

Every ``exp`` argument is <= 0 (see ``intra.py`` for the pair terms).

Kernels (grid in brackets; NT chunks, N sequences, NK / NV tiles of K / V; the state kernels hold all of K):

forward
    ``chunk_cumsum``       [NT, NK, H]    G (fp32; ``kernels/triton_utils.py``)
    ``intra._fwd_A``       [NT, NC*NC, H] A_qk, A_qb, A_ak, A_ab on 16 x 16 sub-block pairs (fp32)
    ``wy._fwd_solve``      [NT, H]        Ai = (I - A_ab)^{-1}
    ``wy._fwd_wu``         [NT, H]        W, U (fp32)
    ``_fwd_state``         [N*H, NV]      loop over the sequence's chunks: hs[c] = S entering chunk c, u = U + W S
                                          (fp32), the state update; final state
    ``_fwd_o``             [NT, NV, H]    o
backward (the forward keeps only its inputs: G, the pair terms, Ai, W, U, hs and u are recomputed)
    ``_bwd_state``         [N*H, NV]      reverse loop with dS = dL/d(state after chunk c) (dht for the last):
                                          dhs[c] = dS; du = A_qb^T do + (B exp(G_L - G)) dS (fp32);
                                          dS <- exp(G_L) dS + scale (q exp(G))^T do + W^T du; the last one is dh0
    ``_bwd_inter``         [NT, NK, H]    dq = scale exp(G) (do hs^T); dk = exp(G_L - G) (V dhs^T);
                                          db = exp(G_L - G) (u dhs^T); dW = du hs^T, da = exp(G') (Ai^T dW);
                                          this K tile's dL/dG_L through the state update
    ``_bwd_dv``            [NT, NV, H]    dY = Ai^T du; dv = A_qk^T do + A_ak^T dY + (K exp(G_L - G)) dhs
    ``_bwd_dA``            [NT, H]        dA_qk = scale do V^T, dA_qb = scale do u^T, dA_ak = dY V^T,
                                          dA_ab = dY U^T + (Ai^T dW) W^T, each on its triangle
    ``intra._bwd_intra``   [NT*NC, NK, H] the pair terms' share of dq, dk, da, db
    ``_bwd_dg``            [NT, NK, H]    dgk: reverse cumsum inside the chunk (below)

Through ``U = Ai Y`` (``Y = A_ak V``), ``W = Ai (a exp(G'))`` and ``Ai = (I - A_ab)^{-1}``:
``dA_ab = Ai^T (dU Y^T + dW (a exp(G'))^T) Ai^T = dY U^T + (Ai^T dW) W^T`` with ``dY = Ai^T dU``, ``dU = du``.

The decay gradient. ``gk_t`` enters ``G_i`` for ``i >= t`` and ``G'_i`` for ``i > t`` of its own chunk only (the
state carries ``exp(G_L)`` explicitly). Every factor is ``x_i exp(+G_i)`` or ``exp(+G'_i)`` on a row side and
``y_j exp(-G_j)`` on a column side, so ``dL/dG_i = q_i dq_i - k_i dk_i - b_i db_i`` (per channel, with the total
gradients), ``dL/dG'_i = a_i da_i``, plus at the last row ``L`` the state update's ``exp(G_L)`` read as one
variable: ``sum_j (k_j dk_state_j + b_j db_state_j) + exp(G_L) sum_v S dS`` (``_bwd_inter``). Then
``dgk_t = sum_{i >= t} dL/dG_i + sum_{i > t} dL/dG'_i``.

Operands of the state and output products are cast to ``DT`` (the input dtype: bf16 / fp16 tensor cores; fp32
inputs use exact products unless torch allows TF32, see ``dot_dtype`` / ``dot_precision``); the WY part (pair
terms, solve, ``W``, ``U``, ``dY``, ``Ai^T dW``, ``dA_ak``, ``dA_ab``) takes fp32 operands. Accumulation is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dplr_delta_rule.triton.intra import _bwd_intra, _fwd_A
from kernels.dplr_delta_rule.triton.wy import _fwd_solve, _fwd_wu
from kernels.triton_utils import (
    Chunks,
    block_size,
    chunk_cumsum,
    chunk_span,
    dot_dtype,
    dot_precision,
    load_tril,
    num_warps,
    prepare_chunks,
    state_tiles,
)

__all__ = ["chunk_dplr_fwd", "chunk_dplr_bwd", "ChunkDPLRDeltaRuleFunction"]

BC = 16
"""Sub-block size of the pair terms and the triangular solve: the smallest ``tl.dot`` tile."""

MAX_TILE = 64
"""Largest K / V tile of the per-chunk kernels (they loop over, or launch programs for, several tiles)."""

# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _to_end(G, t0, n, i_h, o_k, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, TRANSPOSE: tl.constexpr):
    """``exp(G_L - G)`` of a chunk as ``[BT, BK]`` (``[BK, BT]`` if TRANSPOSE; 0 on rows past its end) and
    ``G_L [BK]``, the cumulative log decay at its last token."""
    o_t = tl.arange(0, BT)
    m_k = o_k < K
    b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
    rows = (t0 + o_t) * H + i_h
    if TRANSPOSE:
        m = m_k[:, None] & (o_t < n)[None, :]
        b_x = tl.where(m, b_GL[:, None] - tl.load(G + rows[None, :] * K + o_k[:, None], mask=m, other=0), float("-inf"))
    else:
        m = (o_t < n)[:, None] & m_k[None, :]
        b_x = tl.where(m, b_GL[None, :] - tl.load(G + rows[:, None] * K + o_k[None, :], mask=m, other=0), float("-inf"))
    return tl.exp(b_x), b_GL


@triton.jit
def _fwd_state(
    k,
    v,
    b,
    w,
    U,
    G,
    h0,
    hs,
    u,
    ht,
    cu,
    chunk_offsets,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]

    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh * K * V + off_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(0, tl.cdiv(eos - bos, BT)):
        t0 = bos + i_t * BT
        n = tl.minimum(eos - t0, BT)
        tl.store(hs + ((c0 + i_t) * H + i_h) * K * V + off_kv, b_h, mask=m_kv)
        m_t = o_t < n
        rows = (t0 + o_t) * H + i_h
        m_tv = m_t[:, None] & m_v[None, :]
        m_kt = m_k[:, None] & m_t[None, :]
        b_w = tl.load(w + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_u = tl.load(U + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_u += tl.dot(b_w.to(DT), b_h.to(DT), input_precision=PREC)  # u = U + W S
        tl.store(u + rows[:, None] * V + o_v[None, :], b_u, mask=m_tv)
        b_decT, b_GL = _to_end(G, t0, n, i_h, o_k, H, K, BT, True)
        b_kT = tl.load(k + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0) * b_decT
        b_bT = tl.load(b + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0) * b_decT
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_h *= tl.exp(b_GL)[:, None]
        b_h += tl.dot(b_kT.to(DT), b_v.to(DT), input_precision=PREC)
        b_h += tl.dot(b_bT.to(DT), b_u.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


@triton.jit
def _fwd_o(
    q,
    v,
    u,
    G,
    hs,
    Aqk,
    Aqb,
    o,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < n, o_v < V
    rows = (t0 + o_t) * H + i_h
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_G = tl.load(G + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_h = tl.load(
            hs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_o += tl.dot((b_q * tl.exp(b_G)).to(DT), b_h.to(DT), input_precision=PREC)
    m_tv = m_t[:, None] & m_v[None, :]
    b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_u = tl.load(u + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_o *= scale
    b_o += tl.dot(load_tril(Aqk, rows, n, BT, False, False).to(DT), b_v.to(DT), input_precision=PREC)
    b_o += tl.dot(load_tril(Aqb, rows, n, BT, False, False).to(DT), b_u.to(DT), input_precision=PREC)
    tl.store(o + rows[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_state(
    q,
    b,
    w,
    G,
    Aqb,
    do,
    dht,
    dhs,
    du,
    dh0,
    cu,
    chunk_offsets,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    NT = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += tl.load(dht + i_nh * K * V + off_kv, mask=m_kv, other=0).to(tl.float32)
    for i_r in range(0, NT):
        i_t = NT - 1 - i_r
        t0 = bos + i_t * BT
        n = tl.minimum(eos - t0, BT)
        tl.store(dhs + ((c0 + i_t) * H + i_h) * K * V + off_kv, b_dh, mask=m_kv)
        m_t = o_t < n
        rows = (t0 + o_t) * H + i_h
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        m_kt = m_k[:, None] & m_t[None, :]
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        # du = A_qb^T do + (B exp(G_L - G)) dS
        b_dec, b_GL = _to_end(G, t0, n, i_h, o_k, H, K, BT, False)
        b_bt = tl.load(b + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0) * b_dec
        b_du = tl.dot(load_tril(Aqb, rows, n, BT, False, True).to(DT), b_do.to(DT), input_precision=PREC)
        b_du += tl.dot(b_bt.to(DT), b_dh.to(DT), input_precision=PREC)
        tl.store(du + rows[:, None] * V + o_v[None, :], b_du, mask=m_tv)
        # dS <- exp(G_L) dS + scale (q exp(G))^T do + W^T du
        b_GT = tl.load(G + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_qT = tl.load(q + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0) * tl.exp(b_GT)
        b_wT = tl.load(w + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_dh *= tl.exp(b_GL)[:, None]
        b_dh += scale * tl.dot(b_qT.to(DT), b_do.to(DT), input_precision=PREC)
        b_dh += tl.dot(b_wT.to(DT), b_du.to(DT), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + off_kv, b_dh, mask=m_kv)


@triton.jit
def _bwd_inter(
    k,
    v,
    b,
    g,
    G,
    u,
    Ai,
    hs,
    do,
    dhs,
    du,
    dq,
    dk,
    da,
    db,
    dag,
    dgl,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_t, m_k = o_t < n, o_k < K
    rows = (t0 + o_t) * H + i_h
    base = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do hs^T
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # V dhs^T
    b_db = tl.zeros([BT, BK], dtype=tl.float32)  # u dhs^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # du hs^T
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # sum_v hs * dhs
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        off = rows[:, None] * V + o_v[None, :]
        b_do = tl.load(do + off, mask=m_tv, other=0).to(DT)
        b_v = tl.load(v + off, mask=m_tv, other=0).to(DT)
        b_u = tl.load(u + off, mask=m_tv, other=0).to(DT)
        b_du = tl.load(du + off, mask=m_tv, other=0).to(DT)
        m_vk = m_v[:, None] & m_k[None, :]
        b_hT = tl.load(hs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dhT = tl.load(dhs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dq += tl.dot(b_do, b_hT.to(DT), input_precision=PREC)
        b_dk += tl.dot(b_v, b_dhT.to(DT), input_precision=PREC)
        b_db += tl.dot(b_u, b_dhT.to(DT), input_precision=PREC)
        b_dw += tl.dot(b_du, b_hT.to(DT), input_precision=PREC)
        b_hdh += tl.sum(b_hT * b_dhT, 0)
    m_tk = m_t[:, None] & m_k[None, :]
    off = rows[:, None] * K + o_k[None, :]
    b_G = tl.load(G + off, mask=m_tk, other=0)
    b_Gp = b_G - tl.load(g + off, mask=m_tk, other=0).to(tl.float32)
    b_dec, b_GL = _to_end(G, t0, n, i_h, o_k, H, K, BT, False)
    b_dq *= scale * tl.exp(b_G)
    b_dk *= b_dec
    b_db *= b_dec
    b_dag = tl.dot(load_tril(Ai, rows, n, BT, False, True), b_dw, input_precision=PREC)  # Ai^T dW
    b_k = tl.load(k + off, mask=m_tk, other=0).to(tl.float32)
    b_b = tl.load(b + off, mask=m_tk, other=0).to(tl.float32)
    b_last = tl.sum(b_k * b_dk + b_b * b_db, 0) + tl.exp(b_GL) * b_hdh
    tl.store(dgl + (i_c.to(tl.int64) * H + i_h) * K + o_k, b_last, mask=m_k)
    tl.store(dq + off, b_dq, mask=m_tk)
    tl.store(dk + off, b_dk, mask=m_tk)
    tl.store(db + off, b_db, mask=m_tk)
    tl.store(da + off, b_dag * tl.exp(tl.minimum(b_Gp, 0)), mask=m_tk)
    tl.store(dag + off, b_dag, mask=m_tk)


@triton.jit
def _bwd_dv(
    k,
    G,
    Ai,
    Aqk,
    Aak,
    do,
    du,
    dhs,
    dy,
    dv,
    cu,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < n, o_v < V
    rows = (t0 + o_t) * H + i_h
    m_tv = m_t[:, None] & m_v[None, :]
    off = rows[:, None] * V + o_v[None, :]
    b_du = tl.load(du + off, mask=m_tv, other=0)
    b_do = tl.load(do + off, mask=m_tv, other=0)
    b_dy = tl.dot(load_tril(Ai, rows, n, BT, False, True), b_du, input_precision=PREC)  # dY = Ai^T du
    tl.store(dy + off, b_dy, mask=m_tv)
    b_dv = tl.dot(load_tril(Aak, rows, n, BT, True, True), b_dy, input_precision=PREC)
    b_dv += tl.dot(load_tril(Aqk, rows, n, BT, False, True).to(DT), b_do.to(DT), input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_dec, b_GL = _to_end(G, t0, n, i_h, o_k, H, K, BT, False)
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0) * b_dec
        b_dh = tl.load(
            dhs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_dv += tl.dot(b_k.to(DT), b_dh.to(DT), input_precision=PREC)
    tl.store(dv + off, b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def _bwd_dA(
    v,
    w,
    U,
    u,
    do,
    dy,
    dag,
    dAqk,
    dAqb,
    dAak,
    dAab,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    rows = (t0 + o_t) * H + i_h
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    b_qb = tl.zeros([BT, BT], dtype=tl.float32)
    b_ak = tl.zeros([BT, BT], dtype=tl.float32)
    b_ab = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        off = rows[:, None] * V + o_v[None, :]
        b_do = tl.load(do + off, mask=m_tv, other=0)
        b_vT = tl.trans(tl.load(v + off, mask=m_tv, other=0))
        b_uT = tl.trans(tl.load(u + off, mask=m_tv, other=0))
        b_UT = tl.trans(tl.load(U + off, mask=m_tv, other=0))
        b_dy = tl.load(dy + off, mask=m_tv, other=0)
        b_qk += tl.dot(b_do.to(DT), b_vT.to(DT), input_precision=PREC)
        b_qb += tl.dot(b_do.to(DT), b_uT.to(DT), input_precision=PREC)
        b_ak += tl.dot(b_dy, b_vT.to(tl.float32), input_precision=PREC)
        b_ab += tl.dot(b_dy, b_UT, input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        off = rows[:, None] * K + o_k[None, :]
        b_wT = tl.trans(tl.load(w + off, mask=m_tk, other=0))
        b_ab += tl.dot(tl.load(dag + off, mask=m_tk, other=0), b_wT, input_precision=PREC)
    incl = (o_t[:, None] >= o_t[None, :]) & m_t[:, None]
    strict = (o_t[:, None] > o_t[None, :]) & m_t[:, None]
    off = rows[:, None] * BT + o_t[None, :]
    m_A = m_t[:, None]
    tl.store(dAqk + off, tl.where(incl, b_qk * scale, 0), mask=m_A)
    tl.store(dAqb + off, tl.where(incl, b_qb * scale, 0), mask=m_A)
    tl.store(dAak + off, tl.where(strict, b_ak, 0), mask=m_A)
    tl.store(dAab + off, tl.where(strict, b_ab, 0), mask=m_A)


@triton.jit
def _bwd_dg(
    q,
    k,
    a,
    b,
    dq,
    dk,
    da,
    db,
    dgl,
    dg,
    cu,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
):
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m = (o_t < n)[:, None] & m_k[None, :]
    off = ((t0 + o_t[:, None]) * H + i_h) * K + o_k[None, :]
    b_dG = tl.load(q + off, mask=m, other=0).to(tl.float32) * tl.load(dq + off, mask=m, other=0)
    b_dG -= tl.load(k + off, mask=m, other=0).to(tl.float32) * tl.load(dk + off, mask=m, other=0)
    b_dG -= tl.load(b + off, mask=m, other=0).to(tl.float32) * tl.load(db + off, mask=m, other=0)
    b_dGp = tl.load(a + off, mask=m, other=0).to(tl.float32) * tl.load(da + off, mask=m, other=0)
    b_last = tl.load(dgl + (i_c.to(tl.int64) * H + i_h) * K + o_k, mask=m_k, other=0)
    b_dG += tl.where(o_t[:, None] == n - 1, b_last[None, :], 0)
    b_dg = tl.cumsum(b_dG + b_dGp, axis=0, reverse=True) - b_dGp
    tl.store(dg + off, b_dg.to(dg.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------- launchers


def _state_config(K: int, dtype: torch.dtype, backward: bool) -> tuple[int, int, int, int]:
    """``(BK, BV, num_warps, num_stages)`` of a state kernel: all of K (a power of two >= 16) by a V tile
    (``state_tiles``, as the delta rule's). Two pipeline stages, one where two need more shared memory than an
    H100 has (227 KB; ``compile_check.py --full``): fp32 at K = 256, and the backward (one more ``[BT, K]`` operand
    than the forward) at K = 256, or fp32 at K = 128."""
    BK, BV = state_tiles(K, MAX_TILE)
    stages = 2 if BK * torch.finfo(dtype).bits <= (128 * 16 if backward else 128 * 32) else 1
    return BK, BV, 8, stages


def _forward_parts(q, k, v, a, b, gk, scale: float, h0, ch: Chunks, output_final_state: bool):
    """Everything the output and the backward read: ``G``, the pair terms, ``Ai``, ``W``, ``U``, ``hs``, ``u``, and
    the final state (or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT, NC = ch.BT, ch.BT // BC
    prec, dt = dot_precision(q.dtype), dot_dtype(q.dtype)
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    f32 = {"dtype": torch.float32, "device": q.device}

    G = chunk_cumsum(gk, ch, MAX_TILE)
    Aqk, Aqb, Aak, Aab = (torch.empty(B, T, H, BT, **f32) for _ in range(4))
    _fwd_A[(ch.NT, NC * NC, H)](
        q,
        k,
        a,
        b,
        gk,
        G,
        Aqk,
        Aqb,
        Aak,
        Aab,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        BT=BT,
        BC=BC,
        BK=BK,
        NC=NC,
        PREC=prec,
    )
    Ai = torch.empty(B, T, H, BT, **f32)
    _fwd_solve[(ch.NT, H)](Aab, Ai, ch.cu, ch.chunk_indices, H=H, BT=BT, BC=BC, NC=NC, PREC=prec)
    w, U = torch.empty(B, T, H, K, **f32), torch.empty(B, T, H, V, **f32)
    _fwd_wu[(ch.NT, H)](
        a,
        v,
        gk,
        G,
        Aak,
        Ai,
        w,
        U,
        ch.cu,
        ch.chunk_indices,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=prec,
        num_warps=num_warps(BT, BT, max(BK, BV)),
    )
    SK, SV, snw, sns = _state_config(K, q.dtype, backward=False)
    hs = torch.empty(ch.NT, H, K, V, **f32)
    u = torch.empty(B, T, H, V, **f32)
    ht = torch.empty(ch.N, H, K, V, **f32) if output_final_state else None
    _fwd_state[(ch.N * H, triton.cdiv(V, SV))](
        k,
        v,
        b,
        w,
        U,
        G,
        h0,
        hs,
        u,
        ht,
        ch.cu,
        ch.chunk_offsets,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=SK,
        BV=SV,
        HAS_H0=h0 is not None,
        STORE_HT=output_final_state,
        PREC=prec,
        DT=dt,
        num_warps=snw,
        num_stages=sns,
    )
    return {"G": G, "Aqk": Aqk, "Aqb": Aqb, "Aak": Aak, "Aab": Aab, "Ai": Ai, "w": w, "U": U, "hs": hs, "u": u}, ht


def chunk_dplr_fwd(q, k, v, a, b, gk, scale: float, h0, output_final_state: bool, ch: Chunks):
    """Forward on contiguous inputs: ``o [B, T, H, V]`` (dtype of v) and the final state ``[N, H, K, V]`` (fp32)
    or None."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    x, ht = _forward_parts(q, k, v, a, b, gk, scale, h0, ch, output_final_state)
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    o = torch.empty_like(v)
    _fwd_o[(ch.NT, triton.cdiv(V, BV), H)](
        q,
        v,
        x["u"],
        x["G"],
        x["hs"],
        x["Aqk"],
        x["Aqb"],
        o,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=ch.BT,
        BK=BK,
        BV=BV,
        PREC=dot_precision(q.dtype),
        DT=dot_dtype(q.dtype),
        num_warps=num_warps(ch.BT, BK, BV),
    )
    return o, ht


def chunk_dplr_bwd(q, k, v, a, b, gk, scale: float, h0, do, dht, ch: Chunks, need_dg: bool = True):
    """Backward on contiguous inputs: fp32 ``dq, dk, da, db``, ``dv`` (dtype of v), ``dgk`` (dtype of gk, or None
    when not needed) and ``dh0`` (fp32, or None without an initial state)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT, NC = ch.BT, ch.BT // BC
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    prec, dt = dot_precision(q.dtype), dot_dtype(q.dtype)
    f32 = {"dtype": torch.float32, "device": q.device}
    x, _ = _forward_parts(q, k, v, a, b, gk, scale, h0, ch, False)
    G, Ai, w, U, hs, u = x["G"], x["Ai"], x["w"], x["U"], x["hs"], x["u"]

    SK, SV, snw, sns = _state_config(K, q.dtype, backward=True)
    dhs, du = torch.empty_like(hs), torch.empty_like(u)
    dh0 = torch.empty(ch.N, H, K, V, **f32) if h0 is not None else None
    _bwd_state[(ch.N * H, triton.cdiv(V, SV))](
        q,
        b,
        w,
        G,
        x["Aqb"],
        do,
        dht,
        dhs,
        du,
        dh0,
        ch.cu,
        ch.chunk_offsets,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=SK,
        BV=SV,
        HAS_DHT=dht is not None,
        STORE_DH0=h0 is not None,
        PREC=prec,
        DT=dt,
        num_warps=snw,
        num_stages=sns,
    )
    dq, dk, da, db, dag = (torch.empty(B, T, H, K, **f32) for _ in range(5))
    dgl = torch.empty(ch.NT, H, K, **f32)  # dL/dG_L through the state update, per chunk
    # the widest live set of [BT, BK] tiles: a 32-wide V loop keeps it in registers (the delta rule's dqk choice)
    IV = block_size(V, 32)
    _bwd_inter[(ch.NT, NK, H)](
        k,
        v,
        b,
        gk,
        G,
        u,
        Ai,
        hs,
        do,
        dhs,
        du,
        dq,
        dk,
        da,
        db,
        dag,
        dgl,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=IV,
        PREC=prec,
        DT=dt,
        num_warps=8,
    )
    dy, dv = torch.empty_like(u), torch.empty_like(v)
    _bwd_dv[(ch.NT, NV, H)](
        k,
        G,
        Ai,
        x["Aqk"],
        x["Aak"],
        do,
        du,
        dhs,
        dy,
        dv,
        ch.cu,
        ch.chunk_indices,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(BT, BT, BV),
    )
    # the pair terms are dead from here on: their buffers take their gradients
    dAqk, dAqb, dAak, dAab = x["Aqk"], x["Aqb"], x["Aak"], x["Aab"]
    _bwd_dA[(ch.NT, H)](
        v,
        w,
        U,
        u,
        do,
        dy,
        dag,
        dAqk,
        dAqb,
        dAak,
        dAab,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=block_size(K, 32),
        BV=IV,
        PREC=prec,
        DT=dt,
        num_warps=8,
    )
    _bwd_intra[(ch.NT * NC, NK, H)](
        q,
        k,
        a,
        b,
        gk,
        G,
        dAqk,
        dAqb,
        dAak,
        dAab,
        dq,
        dk,
        da,
        db,
        ch.cu,
        ch.chunk_indices,
        H=H,
        K=K,
        BT=BT,
        BC=BC,
        BK=BK,
        NC=NC,
        PREC=prec,
    )
    dg = None
    if need_dg:
        dg = torch.empty_like(gk)
        _bwd_dg[(ch.NT, NK, H)](
            q,
            k,
            a,
            b,
            dq,
            dk,
            da,
            db,
            dgl,
            dg,
            ch.cu,
            ch.chunk_indices,
            H=H,
            K=K,
            BT=BT,
            BK=BK,
            num_warps=num_warps(BT, BK),
        )
    return dq, dk, dv, da, db, dg, dh0


class ChunkDPLRDeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper: ``apply(q, k, v, a, b, gk, scale, initial_state, output_final_state, chunk_size,
    cu_seqlens)``."""

    @staticmethod
    def forward(ctx, q, k, v, a, b, gk, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        B, T = q.shape[:2]
        ch = prepare_chunks(cu_seqlens, B, T, chunk_size, q.device)
        o, ht = chunk_dplr_fwd(q, k, v, a, b, gk, scale, initial_state, output_final_state, ch)
        ctx.save_for_backward(q, k, v, a, b, gk, initial_state)
        ctx.scale, ctx.chunks = scale, ch
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, a, b, gk, h0 = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, da, db, dg, dh0 = chunk_dplr_bwd(
            q, k, v, a, b, gk, ctx.scale, h0, do, dht, ctx.chunks, need_dg=ctx.needs_input_grad[5]
        )
        grads = (x.to(y.dtype) for x, y in ((dq, q), (dk, k), (da, a), (db, b)))
        dq, dk, da, db = grads
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq, dk, dv, da, db, dg, None, dh0, None, None, None
