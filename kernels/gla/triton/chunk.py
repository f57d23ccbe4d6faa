"""Chunkwise GLA in Triton: forward and backward kernels behind one ``torch.autograd.Function``.

Per sequence and head, time is cut into chunks of ``BT`` tokens (chunks never cross a sequence
boundary; see ``kernels/triton_utils.py``). Inside a chunk ``G_i = g_1 + ... + g_i`` (fp32, per key
channel, non-increasing) and, with ``S`` the state entering the chunk and ``L`` its last token::

    o_i    = scale * [(q_i * exp(G_i)) S + sum_{j <= i} A'_ij v_j],   A'_ij = sum_k q_ik k_jk exp(G_ik - G_jk)
    S_next = exp(G_L) * S + (k * exp(G_L - G))^T v

Every ``exp`` argument is <= 0. The intra-chunk scores ``A = scale * A'`` are built on 16 x 16
sub-blocks: for a query block ``I`` after a key block ``J`` with ``r`` the first row of ``I``,
``exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j)`` (both factors <= 1, one ``tl.dot``; for dk the
reference is the last row ``e`` of ``J`` instead); diagonal sub-blocks are summed exactly, one key row at
a time, with the exponent clamped to <= 0 before ``exp`` and the result masked.

Kernels (grid in brackets; NT chunks in all, N sequences, NK / NV tiles of K / V):

forward
    ``chunk_cumsum``   [NT, NK, H]     G = chunk-local cumsum of g, fp32 (``kernels/triton_utils.py``)
    ``_fwd_state``     [N*H, NK, NV]   loop over the sequence's chunks: store the state entering each
                                       chunk (fp32 ``hs [NT, H, K, V]``) and the final state
    ``_fwd_A``         [NT, NC*NC, H]  intra-chunk scores A (fp32 ``[B*T, H, BT]``), one sub-block pair
    ``_fwd_o``         [NT, NV, H]     o = scale (q * exp(G)) hs + A v
backward (G, hs and A are recomputed rather than stored by the forward)
    ``_bwd_state``     [N*H, NK, NV]   reverse loop: dhs[c] = dL/d(state after chunk c),
                                       dS <- exp(G_L) * dS + scale (q * exp(G))^T do; the last one is dh0
    ``_bwd_dA``        [NT, H]         dA_ij = scale do_i . v_j  (j <= i)
    ``_bwd_dv``        [NT, NV, H]     dv = A^T do + (k * exp(G_L - G)) dhs
    ``_bwd_dqk_intra`` [NT*NC, NK, H]  dq_i = sum_{j<=i} dA_ij k_j exp(G_i - G_j),
                                       dk_j = sum_{i>=j} dA_ij q_i exp(G_i - G_j), same sub-block split
    ``_bwd_dqk_inter`` [NT, NK, H]     dq += scale exp(G) (do hs^T),  dk += exp(G_L - G) (v dhs^T)
    ``_bwd_dg``        [N*H, NK]       dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s) + sum_v (dS_T * S_T)

The dg identity: write ``Gamma_t`` for the cumulative gate over the whole sequence, ``q~ = q exp(Gamma)``
and ``k~ = k exp(-Gamma)``; then ``o_t = scale q~_t (S_0 + sum_{j<=t} k~_j^T v_j)`` and
``S_T = exp(Gamma_T) (S_0 + sum_j k~_j^T v_j)``, so ``dL/dGamma_t = q_t dq_t - k_t dk_t`` (+ ``sum_v dS_T S_T``
at the last step), and ``g`` enters ``Gamma_s`` for every ``s >= t``: a reverse cumsum per sequence.

Operands of ``tl.dot`` are cast to ``DT``, the input dtype (bf16 / fp16 tensor cores; fp32 uses exact
products unless torch allows TF32), see ``dot_dtype`` / ``dot_precision``; accumulation is always fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import (
    Chunks,
    block_size,
    bwd_dA,
    chunk_cumsum,
    chunk_span,
    dot_dtype,
    dot_precision,
    num_warps,
    prepare_chunks,
)

__all__ = ["chunk_gla_fwd", "chunk_gla_bwd", "ChunkGLAFunction"]

BC = 16
"""Sub-block size inside a chunk: the smallest ``tl.dot`` tile."""

MAX_TILE = 64
"""Largest K / V tile; larger head dims loop over (or launch more programs for) several tiles."""


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _fwd_state(
    k,
    v,
    G,
    h0,
    hs,
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
    i_nh, i_k, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
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
        off_kT = ((t0 + o_t[None, :]) * H + i_h) * K + o_k[:, None]  # [BK, BT]: keys transposed
        b_kT = tl.load(k + off_kT, mask=m_k[:, None] & m_t[None, :], other=0)
        b_GT = tl.load(G + off_kT, mask=m_k[:, None] & m_t[None, :], other=0)
        b_v = tl.load(v + ((t0 + o_t[:, None]) * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)  # G at the chunk's last token
        b_kT = (b_kT * tl.exp(b_GL[:, None] - b_GT)).to(DT)  # keys decayed to the chunk end
        b_h = b_h * tl.exp(b_GL)[:, None] + tl.dot(b_kT, b_v.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


@triton.jit
def _fwd_A(
    q,
    k,
    G,
    A,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_ij, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_i, i_j = i_ij // NC, i_ij % NC  # query sub-block, key sub-block
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    if i_i < i_j or i_i * BC >= n:  # above the diagonal (never read) or past the sequence end
        return
    o_c = tl.arange(0, BC)
    m_i = i_i * BC + o_c < n
    rows_i = (t0 + i_i * BC + o_c) * H + i_h  # [BC] token-head rows of the query block
    b_A = tl.zeros([BC, BC], dtype=tl.float32)
    if i_i > i_j:  # off-diagonal: every key row is valid (it precedes a valid query row)
        rows_j = (t0 + i_j * BC + o_c) * H + i_h
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            b_Gr = tl.load(G + ((t0 + i_i * BC) * H + i_h) * K + o_k, mask=m_k, other=0)  # reference row r
            m_q = m_i[:, None] & m_k[None, :]
            b_q = tl.load(q + rows_i[:, None] * K + o_k[None, :], mask=m_q, other=0)
            b_Gi = tl.load(G + rows_i[:, None] * K + o_k[None, :], mask=m_q, other=0)
            b_kT = tl.load(k + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0)
            b_GjT = tl.load(G + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0)
            b_qg = (b_q * tl.exp(tl.minimum(b_Gi - b_Gr[None, :], 0))).to(DT)
            b_kg = (b_kT * tl.exp(b_Gr[:, None] - b_GjT)).to(DT)
            b_A += tl.dot(b_qg, b_kg, input_precision=PREC)
    else:  # diagonal: exact pairwise decays, one key row at a time
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            m_q = m_i[:, None] & m_k[None, :]
            b_q = tl.load(q + rows_i[:, None] * K + o_k[None, :], mask=m_q, other=0).to(tl.float32)
            b_Gi = tl.load(G + rows_i[:, None] * K + o_k[None, :], mask=m_q, other=0)
            for j in range(0, BC):
                m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # key row j exists
                row_j = (t0 + i_i * BC + j) * H + i_h
                b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
                b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
                b_a = tl.sum(b_q * b_kj[None, :] * tl.exp(tl.minimum(b_Gi - b_Gj[None, :], 0)), 1)  # [BC]
                b_A += tl.where(o_c[None, :] == j, b_a[:, None], 0)
        b_A = tl.where(o_c[:, None] >= o_c[None, :], b_A, 0)
    tl.store(A + rows_i[:, None] * BT + i_j * BC + o_c[None, :], b_A * scale, mask=m_i[:, None])


@triton.jit
def _fwd_o(
    q,
    v,
    G,
    hs,
    A,
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
        m_q = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + rows[:, None] * K + o_k[None, :], mask=m_q, other=0)
        b_G = tl.load(G + rows[:, None] * K + o_k[None, :], mask=m_q, other=0)
        b_h = tl.load(
            hs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_o += tl.dot((b_q * tl.exp(b_G)).to(DT), b_h.to(DT), input_precision=PREC)
    m_A = m_t[:, None] & (o_t[:, None] >= o_t[None, :])
    b_A = tl.load(A + rows[:, None] * BT + o_t[None, :], mask=m_A, other=0)
    m_o = m_t[:, None] & m_v[None, :]
    b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_o, other=0)
    b_o = b_o * scale + tl.dot(b_A.to(DT), b_v.to(DT), input_precision=PREC)
    tl.store(o + rows[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_o)


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_state(
    q,
    G,
    do,
    dht,
    dhs,
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
    i_nh, i_k, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    NT = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
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
        off_qT = ((t0 + o_t[None, :]) * H + i_h) * K + o_k[:, None]  # [BK, BT]
        b_qT = tl.load(q + off_qT, mask=m_k[:, None] & m_t[None, :], other=0)
        b_GT = tl.load(G + off_qT, mask=m_k[:, None] & m_t[None, :], other=0)
        b_do = tl.load(
            do + ((t0 + o_t[:, None]) * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0
        )
        b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        b_qT = (b_qT * tl.exp(b_GT)).to(DT)
        b_dh = b_dh * tl.exp(b_GL)[:, None] + scale * tl.dot(b_qT, b_do.to(DT), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + off_kv, b_dh, mask=m_kv)


@triton.jit
def _bwd_dv(
    k,
    G,
    A,
    do,
    dhs,
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
    b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    # A^T[j, i] = A[i, j] for i >= j (both valid)
    m_AT = m_t[None, :] & (o_t[None, :] >= o_t[:, None])
    b_AT = tl.load(A + rows[None, :] * BT + o_t[:, None], mask=m_AT, other=0)
    b_dv = tl.dot(b_AT.to(DT), b_do.to(DT), input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_G = tl.load(G + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        b_dh = tl.load(
            dhs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_kg = (b_k * tl.exp(tl.minimum(b_GL[None, :] - b_G, 0))).to(DT)
        b_dv += tl.dot(b_kg, b_dh.to(DT), input_precision=PREC)
    tl.store(dv + rows[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def _bwd_dqk_intra(
    q,
    k,
    G,
    dA,
    dq,
    dk,
    cu,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_ci, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_c, i_i = i_ci // NC, i_ci % NC
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    if i_i * BC >= n:
        return
    o_c = tl.arange(0, BC)
    o_k = i_k * BK + tl.arange(0, BK)
    m_i, m_k = i_i * BC + o_c < n, o_k < K
    m_ik = m_i[:, None] & m_k[None, :]
    rows_i = (t0 + i_i * BC + o_c) * H + i_h
    b_Gi = tl.load(G + rows_i[:, None] * K + o_k[None, :], mask=m_ik, other=0)

    # dq of query block i: earlier key blocks through the first row r of block i, then the diagonal
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    if i_i > 0:
        b_Gr = tl.load(G + ((t0 + i_i * BC) * H + i_h) * K + o_k, mask=m_k, other=0)
        for i_j in range(0, i_i):
            rows_j = (t0 + i_j * BC + o_c) * H + i_h
            b_kj = tl.load(k + rows_j[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
            b_Gj = tl.load(G + rows_j[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0)
            b_dA = tl.load(dA + rows_i[:, None] * BT + i_j * BC + o_c[None, :], mask=m_i[:, None], other=0)
            b_kg = (b_kj * tl.exp(b_Gr[None, :] - b_Gj)).to(DT)
            b_dq += tl.dot(b_dA.to(DT), b_kg, input_precision=PREC)
        b_dq *= tl.exp(tl.minimum(b_Gi - b_Gr[None, :], 0))
    for j in range(0, BC):
        m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # row j exists
        row_j = (t0 + i_i * BC + j) * H + i_h
        b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
        b_dAj = tl.load(dA + rows_i * BT + i_i * BC + j, mask=m_i, other=0)  # column j of the diagonal block
        b_w = tl.exp(tl.minimum(b_Gi - b_Gj[None, :], 0))
        b_dq += tl.where(o_c[:, None] >= j, b_dAj[:, None] * b_kj[None, :] * b_w, 0)

    # dk of key block i: later query blocks through the last row e of block i, then the diagonal
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    n_blocks = tl.cdiv(n, BC)
    if i_i + 1 < n_blocks:  # then block i is full and e = its last row
        b_Ge = tl.load(G + ((t0 + i_i * BC + BC - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        for i_j in range(i_i + 1, n_blocks):
            m_j = i_j * BC + o_c < n
            m_jk = m_j[:, None] & m_k[None, :]
            rows_j = (t0 + i_j * BC + o_c) * H + i_h
            b_qj = tl.load(q + rows_j[:, None] * K + o_k[None, :], mask=m_jk, other=0)
            b_Gj = tl.load(G + rows_j[:, None] * K + o_k[None, :], mask=m_jk, other=0)
            # dA^T block: [key row in i, query row in j]
            b_dAT = tl.load(dA + rows_j[None, :] * BT + i_i * BC + o_c[:, None], mask=m_j[None, :], other=0)
            b_qg = (b_qj * tl.exp(tl.minimum(b_Gj - b_Ge[None, :], 0))).to(DT)
            b_dk += tl.dot(b_dAT.to(DT), b_qg, input_precision=PREC)
        b_dk *= tl.exp(tl.minimum(b_Ge[None, :] - b_Gi, 0))
    for j in range(0, BC):
        m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # row j exists
        row_j = (t0 + i_i * BC + j) * H + i_h
        b_qj = tl.load(q + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
        b_dAj = tl.load(dA + row_j * BT + i_i * BC + o_c, mask=o_c < tl.where(i_i * BC + j < n, BC, 0), other=0)
        b_w = tl.exp(tl.minimum(b_Gj[None, :] - b_Gi, 0))
        b_dk += tl.where(o_c[:, None] <= j, b_dAj[:, None] * b_qj[None, :] * b_w, 0)

    tl.store(dq + rows_i[:, None] * K + o_k[None, :], b_dq, mask=m_ik)
    tl.store(dk + rows_i[:, None] * K + o_k[None, :], b_dk, mask=m_ik)


@triton.jit
def _bwd_dqk_inter(
    v,
    G,
    hs,
    do,
    dhs,
    dq,
    dk,
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
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        m_vk = m_v[:, None] & m_k[None, :]
        b_hT = tl.load(hs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dhT = tl.load(dhs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dq += tl.dot(b_do.to(DT), b_hT.to(DT), input_precision=PREC)
        b_dk += tl.dot(b_v.to(DT), b_dhT.to(DT), input_precision=PREC)
    m_tk = m_t[:, None] & m_k[None, :]
    b_G = tl.load(G + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
    b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
    off = rows[:, None] * K + o_k[None, :]
    b_dq = tl.load(dq + off, mask=m_tk, other=0) + scale * tl.exp(b_G) * b_dq
    b_dk = tl.load(dk + off, mask=m_tk, other=0) + tl.exp(tl.minimum(b_GL[None, :] - b_G, 0)) * b_dk
    tl.store(dq + off, b_dq, mask=m_tk)
    tl.store(dk + off, b_dk, mask=m_tk)


@triton.jit
def _bwd_dg(
    q,
    k,
    dq,
    dk,
    dg,
    dg_last,
    cu,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    HAS_LAST: tl.constexpr,
):
    i_nh, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    NT = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_carry = tl.zeros([BK], dtype=tl.float32)
    if HAS_LAST:  # sum_v dS_T * S_T enters every step's gate
        b_carry += tl.load(dg_last + i_nh * K + o_k, mask=m_k, other=0)
    for i_r in range(0, NT):
        t0 = bos + (NT - 1 - i_r) * BT
        m = (o_t[:, None] < eos - t0) & m_k[None, :]
        off = ((t0 + o_t[:, None]) * H + i_h) * K + o_k[None, :]
        b_x = tl.load(q + off, mask=m, other=0).to(tl.float32) * tl.load(dq + off, mask=m, other=0)
        b_x -= tl.load(k + off, mask=m, other=0).to(tl.float32) * tl.load(dk + off, mask=m, other=0)
        tl.store(dg + off, (tl.cumsum(b_x, axis=0, reverse=True) + b_carry[None, :]).to(dg.dtype.element_ty), mask=m)
        b_carry += tl.sum(b_x, 0)


# ----------------------------------------------------------------------------------------------- launchers


def _states(k, v, G, h0, ch: Chunks, output_final_state: bool, prec: str, dt):
    _, _, H, K = k.shape
    V = v.shape[-1]
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    hs = torch.empty(ch.NT, H, K, V, dtype=torch.float32, device=k.device)
    ht = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    grid = (ch.N * H, triton.cdiv(K, BK), triton.cdiv(V, BV))
    _fwd_state[grid](
        k,
        v,
        G,
        h0,
        hs,
        ht,
        ch.cu,
        ch.chunk_offsets,
        H=H,
        K=K,
        V=V,
        BT=ch.BT,
        BK=BK,
        BV=BV,
        HAS_H0=h0 is not None,
        STORE_HT=output_final_state,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(ch.BT, BK, BV),
    )
    return hs, ht


def _scores(q, k, G, scale: float, ch: Chunks, prec: str, dt) -> torch.Tensor:
    B, T, H, K = q.shape
    A = torch.empty(B, T, H, ch.BT, dtype=torch.float32, device=q.device)
    NC = ch.BT // BC
    _fwd_A[(ch.NT, NC * NC, H)](
        q,
        k,
        G,
        A,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        BT=ch.BT,
        BC=BC,
        BK=block_size(K, MAX_TILE),
        NC=NC,
        PREC=prec,
        DT=dt,
    )
    return A


def chunk_gla_fwd(q, k, v, g, scale: float, h0, output_final_state: bool, ch: Chunks):
    """Forward on contiguous inputs: returns ``o [B, T, H, V]`` (dtype of v) and the final state or None."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    prec, dt = dot_precision(q.dtype), dot_dtype(q.dtype)
    G = chunk_cumsum(g, ch, MAX_TILE)
    hs, ht = _states(k, v, G, h0, ch, output_final_state, prec, dt)
    A = _scores(q, k, G, scale, ch, prec, dt)
    o = torch.empty_like(v)
    BV = block_size(V, MAX_TILE)
    _fwd_o[(ch.NT, triton.cdiv(V, BV), H)](
        q,
        v,
        G,
        hs,
        A,
        o,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=ch.BT,
        BK=block_size(K, MAX_TILE),
        BV=BV,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(ch.BT, block_size(K, MAX_TILE), BV),
    )
    return o, ht


def chunk_gla_bwd(q, k, v, g, scale: float, h0, ht, do, dht, ch: Chunks, need_dg: bool = True):
    """Backward on contiguous inputs: returns fp32 ``dq, dk``, ``dv`` (dtype of v), ``dg`` (dtype of g), ``dh0``."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    BT, NC = ch.BT, ch.BT // BC
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    prec, dt, nw = dot_precision(q.dtype), dot_dtype(q.dtype), num_warps(BT, BK, BV)
    G = chunk_cumsum(g, ch, MAX_TILE)
    hs, _ = _states(k, v, G, h0, ch, False, prec, dt)
    A = _scores(q, k, G, scale, ch, prec, dt)

    dhs = torch.empty_like(hs)
    dh0 = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
    _bwd_state[(ch.N * H, NK, NV)](
        q,
        G,
        do,
        dht,
        dhs,
        dh0,
        ch.cu,
        ch.chunk_offsets,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        HAS_DHT=dht is not None,
        STORE_DH0=h0 is not None,
        PREC=prec,
        DT=dt,
        num_warps=nw,
    )
    dA = torch.empty_like(A)
    bwd_dA[(ch.NT, H)](
        do,
        v,
        dA,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        V=V,
        BT=BT,
        BV=BV,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(BT, BT, BV),
    )
    dv = torch.empty_like(v)
    _bwd_dv[(ch.NT, NV, H)](
        k,
        G,
        A,
        do,
        dhs,
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
        num_warps=nw,
    )
    dq = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.empty_like(dq)
    _bwd_dqk_intra[(ch.NT * NC, NK, H)](
        q, k, G, dA, dq, dk, ch.cu, ch.chunk_indices, H=H, K=K, BT=BT, BC=BC, BK=BK, NC=NC, PREC=prec, DT=dt
    )
    _bwd_dqk_inter[(ch.NT, NK, H)](
        v,
        G,
        hs,
        do,
        dhs,
        dq,
        dk,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=prec,
        DT=dt,
        num_warps=nw,
    )
    if not need_dg:
        return dq, dk, dv, None, dh0
    dg_last = (dht.float() * ht).sum(-1).contiguous() if dht is not None else None  # (N, H, K)
    dg = torch.empty_like(g)
    _bwd_dg[(ch.N * H, NK)](
        q,
        k,
        dq,
        dk,
        dg,
        dg_last,
        ch.cu,
        H=H,
        K=K,
        BT=BT,
        BK=BK,
        HAS_LAST=dg_last is not None,
        num_warps=num_warps(BT, BK),
    )
    return dq, dk, dv, dg, dh0


class ChunkGLAFunction(torch.autograd.Function):
    """Autograd wrapper: ``apply(q, k, v, g, scale, initial_state, output_final_state, chunk_size, cu_seqlens)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        B, T = q.shape[:2]
        ch = prepare_chunks(cu_seqlens, B, T, chunk_size, q.device)
        o, ht = chunk_gla_fwd(q, k, v, g, scale, initial_state, output_final_state, ch)
        ctx.save_for_backward(q, k, v, g, initial_state, ht)
        ctx.scale, ctx.chunks = scale, ch
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, dg, dh0 = chunk_gla_bwd(q, k, v, g, ctx.scale, h0, ht, do, dht, ctx.chunks, ctx.needs_input_grad[3])
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv, dg, None, dh0, None, None, None
