"""The WY / UT representation of a DPLR chunk in Triton: ``Ai = (I - A_ab)^{-1}``, then ``W`` and ``U``.

With the pair terms of ``intra.py`` and ``G' `` the exclusive chunk-local cumsum of ``gk``, what the low-rank term
reads at each token of a chunk, ``u_i = S_{i-1}^T a_i``, solves ``(I - A_ab) u = A_ak V + (a * exp(G')) S`` for the
state ``S`` entering the chunk, so ``u = U + W S`` with::

    Ai = (I - A_ab)^{-1}       unit lower triangular (A_ab strictly lower)
    W  = Ai (a * exp(G'))      [BT, K]
    U  = Ai (A_ak V)           [BT, V]

Kernels (grid in brackets; NT chunks in all):

``_fwd_solve``  [NT, H]   ``Ai`` (fp32 ``[B*T, H, BT]``) by 16 x 16 sub-blocks: each diagonal block
                          ``(I - N)^{-1}`` (``N`` its strictly lower block of ``A_ab``) by forward substitution in
                          registers, then the blocks left of it, block row by block row,
                          ``X_ij = X_ii sum_{j <= l < i} A_ab[i, l] X_lj`` (the ``X_lj`` of earlier block rows are
                          read back from ``Ai``).
``_fwd_wu``     [NT, H]   ``W``, ``U`` (fp32).

All products take fp32 operands (``input_precision`` ``PREC``): the inverse is the numerically delicate part.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import chunk_span, load_tril

__all__ = []  # kernels only; launched from kernels.dplr_delta_rule.triton.chunk


@triton.jit
def _fwd_solve(
    Aab,
    Ai,
    cu,
    chunk_indices,
    H: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_c = tl.arange(0, BC)
    for bi in tl.static_range(NC):
        if bi * BC < n:
            m_i = bi * BC + o_c < n
            rows_i = (t0 + bi * BC + o_c) * H + i_h
            # diagonal block: X = (I - N)^{-1}, row by row; b_x holds X - I. Row r becomes
            # N_r + sum_{j<r} N_rj (X_j - e_j); N_rj vanishes for j >= r (rows not yet replaced)
            keep = (o_c[:, None] > o_c[None, :]) & m_i[:, None]
            b_x = tl.load(Aab + rows_i[:, None] * BT + bi * BC + o_c[None, :], mask=keep, other=0)
            for r in range(1, BC):
                b_a = tl.sum(tl.where(o_c[:, None] == r, b_x, 0), 0)  # row r
                b_a += tl.sum(b_a[:, None] * b_x, 0)
                b_x = tl.where(o_c[:, None] == r, b_a[None, :], b_x)
            b_xii = b_x + (o_c[:, None] == o_c[None, :]).to(tl.float32)
            tl.store(Ai + rows_i[:, None] * BT + bi * BC + o_c[None, :], b_xii, mask=m_i[:, None])
            # blocks left of the diagonal; the X_lj of earlier block rows are complete in Ai (barrier below)
            for bj in tl.static_range(bi):
                b_acc = tl.zeros([BC, BC], dtype=tl.float32)
                for bl in tl.static_range(bj, bi):
                    b_m = tl.load(Aab + rows_i[:, None] * BT + bl * BC + o_c[None, :], mask=m_i[:, None], other=0)
                    rows_l = (t0 + bl * BC + o_c) * H + i_h
                    b_xlj = tl.load(Ai + rows_l[:, None] * BT + bj * BC + o_c[None, :])  # block row bl is full
                    b_acc += tl.dot(b_m, b_xlj, input_precision=PREC)
                b_xij = tl.dot(b_xii, b_acc, input_precision=PREC)
                tl.store(Ai + rows_i[:, None] * BT + bj * BC + o_c[None, :], b_xij, mask=m_i[:, None])
        tl.debug_barrier()  # block row bi is in Ai before the next block row reads it


@triton.jit
def _fwd_wu(
    a,
    v,
    g,
    G,
    Aak,
    Ai,
    w,
    u,
    cu,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    rows = (t0 + o_t) * H + i_h
    b_ai = load_tril(Ai, rows, n, BT, False, False)
    b_aiak = tl.dot(b_ai, load_tril(Aak, rows, n, BT, True, False), input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        off = rows[:, None] * K + o_k[None, :]
        b_a = tl.load(a + off, mask=m_tk, other=0).to(tl.float32)
        b_Gp = tl.load(G + off, mask=m_tk, other=0) - tl.load(g + off, mask=m_tk, other=0).to(tl.float32)
        b_w = tl.dot(b_ai, b_a * tl.exp(tl.minimum(b_Gp, 0)), input_precision=PREC)
        tl.store(w + off, b_w, mask=m_tk)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        off = rows[:, None] * V + o_v[None, :]
        b_v = tl.load(v + off, mask=m_tv, other=0).to(tl.float32)
        tl.store(u + off, tl.dot(b_aiak, b_v, input_precision=PREC), mask=m_tv)
