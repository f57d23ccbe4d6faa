"""The four decayed pair terms of a DPLR chunk in Triton, forward and backward, with every ``exp`` argument <= 0.

Inside a chunk (``kernels/triton_utils.py`` cuts them per sequence) ``G`` is the inclusive chunk-local cumsum of
``gk`` and ``G' = G - gk`` the exclusive one, per key channel. For rows ``i`` and columns ``j``::

    A_qk[i, j] = scale sum_c q_ic k_jc exp(G_ic - G_jc)      j <= i
    A_qb[i, j] = scale sum_c q_ic b_jc exp(G_ic - G_jc)      j <= i
    A_ak[i, j] =       sum_c a_ic k_jc exp(G'_ic - G_jc)     j <  i
    A_ab[i, j] =       sum_c a_ic b_jc exp(G'_ic - G_jc)     j <  i

(stored fp32 ``[B*T, H, BT]``, row ``i`` of a chunk holding ``A[i, :]``, zero outside its triangle). The chunk is
cut into 16-row sub-blocks. Between a row block ``I`` and an earlier column block ``J`` the decay goes through the
token ``r`` just before ``I``: ``exp(R_i - G_j) = exp(R_i - G_r) exp(G_r - G_j)`` (``R`` is ``G`` or ``G'``;
both factors <= 1 because ``i > r >= j``), so each pair is one ``tl.dot``. Inside a diagonal block the exponent of
every pair is formed exactly, one column at a time, clamped to <= 0 and masked. The backward (``_bwd_intra``)
splits the same way; for the column side it goes through the last token ``e`` of the column block instead.

Products take fp32 operands (``input_precision`` ``PREC``): ``A_ab`` and ``A_ak`` feed the triangular solve.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import chunk_span

__all__ = []  # kernels only; launched from kernels.dplr_delta_rule.triton.chunk


@triton.jit
def _load_rows(x, G, g, rows, mask, o_k, K: tl.constexpr, EXCLUSIVE: tl.constexpr):
    """A ``[len(rows), BK]`` tile of ``x`` (fp32) with its log decays: ``G`` (inclusive) or ``G - g`` (exclusive),
    0 on masked entries."""
    off = rows[:, None] * K + o_k[None, :]
    b_x = tl.load(x + off, mask=mask, other=0).to(tl.float32)
    b_G = tl.load(G + off, mask=mask, other=0)
    if EXCLUSIVE:
        b_G -= tl.load(g + off, mask=mask, other=0).to(tl.float32)
    return b_x, b_G


@triton.jit
def _fwd_A(
    q,
    k,
    a,
    b,
    g,
    G,
    Aqk,
    Aqb,
    Aak,
    Aab,
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
):
    i_c, i_ij, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_i, i_j = i_ij // NC, i_ij % NC  # row block, column block
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    if i_i < i_j or i_i * BC >= n:  # above the diagonal (never read) or past the sequence end
        return
    o_c = tl.arange(0, BC)
    m_i = i_i * BC + o_c < n
    rows_i = (t0 + i_i * BC + o_c) * H + i_h
    b_qk = tl.zeros([BC, BC], dtype=tl.float32)
    b_qb = tl.zeros([BC, BC], dtype=tl.float32)
    b_ak = tl.zeros([BC, BC], dtype=tl.float32)
    b_ab = tl.zeros([BC, BC], dtype=tl.float32)
    if i_i > i_j:  # every column row is valid: it precedes a valid row
        rows_j = (t0 + i_j * BC + o_c) * H + i_h
        row_r = (t0 + i_i * BC - 1) * H + i_h  # the token before block i
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            m_ik = m_i[:, None] & m_k[None, :]
            b_Gr = tl.load(G + row_r * K + o_k, mask=m_k, other=0)
            b_q, b_Gi = _load_rows(q, G, g, rows_i, m_ik, o_k, K, False)
            b_a, b_Gpi = _load_rows(a, G, g, rows_i, m_ik, o_k, K, True)
            # clamped: rows past the end load G = 0, and G' - G_r can round to +1 ulp at i = r
            b_qg = b_q * tl.exp(tl.minimum(b_Gi - b_Gr[None, :], 0))
            b_ag = b_a * tl.exp(tl.minimum(b_Gpi - b_Gr[None, :], 0))
            m_jk = (o_c < BC)[:, None] & m_k[None, :]
            b_k, b_Gj = _load_rows(k, G, g, rows_j, m_jk, o_k, K, False)
            b_b = tl.load(b + rows_j[:, None] * K + o_k[None, :], mask=m_jk, other=0).to(tl.float32)
            b_dec = tl.exp(b_Gr[None, :] - b_Gj)
            b_kgT = tl.trans(b_k * b_dec)
            b_bgT = tl.trans(b_b * b_dec)
            b_qk += tl.dot(b_qg, b_kgT, input_precision=PREC)
            b_qb += tl.dot(b_qg, b_bgT, input_precision=PREC)
            b_ak += tl.dot(b_ag, b_kgT, input_precision=PREC)
            b_ab += tl.dot(b_ag, b_bgT, input_precision=PREC)
    else:  # diagonal block: exact pairwise exponents, one column at a time
        for i_k in range(0, tl.cdiv(K, BK)):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            m_ik = m_i[:, None] & m_k[None, :]
            b_q, b_Gi = _load_rows(q, G, g, rows_i, m_ik, o_k, K, False)
            b_a, b_Gpi = _load_rows(a, G, g, rows_i, m_ik, o_k, K, True)
            for j in range(0, BC):
                m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # row j exists
                row_j = (t0 + i_i * BC + j) * H + i_h
                b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
                b_bj = tl.load(b + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
                b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
                b_wq = b_q * tl.exp(tl.minimum(b_Gi - b_Gj[None, :], 0))
                b_wa = b_a * tl.exp(tl.minimum(b_Gpi - b_Gj[None, :], 0))
                col = o_c[None, :] == j
                b_qk += tl.where(col, tl.sum(b_wq * b_kj[None, :], 1)[:, None], 0)
                b_qb += tl.where(col, tl.sum(b_wq * b_bj[None, :], 1)[:, None], 0)
                b_ak += tl.where(col, tl.sum(b_wa * b_kj[None, :], 1)[:, None], 0)
                b_ab += tl.where(col, tl.sum(b_wa * b_bj[None, :], 1)[:, None], 0)
        incl = o_c[:, None] >= o_c[None, :]
        strict = o_c[:, None] > o_c[None, :]
        b_qk = tl.where(incl, b_qk, 0)
        b_qb = tl.where(incl, b_qb, 0)
        b_ak = tl.where(strict, b_ak, 0)
        b_ab = tl.where(strict, b_ab, 0)
    off = rows_i[:, None] * BT + i_j * BC + o_c[None, :]
    tl.store(Aqk + off, b_qk * scale, mask=m_i[:, None])
    tl.store(Aqb + off, b_qb * scale, mask=m_i[:, None])
    tl.store(Aak + off, b_ak, mask=m_i[:, None])
    tl.store(Aab + off, b_ab, mask=m_i[:, None])


@triton.jit
def _bwd_intra(
    q,
    k,
    a,
    b,
    g,
    G,
    dAqk,
    dAqb,
    dAak,
    dAab,
    dq,
    dk,
    da,
    db,
    cu,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    PREC: tl.constexpr,
):
    """Adds the pair terms' share to the fp32 ``dq, dk, da, db`` of one 16-row block (in place). The ``dA`` are
    the gradients of the four ``A`` (``scale`` folded into ``dA_qk``, ``dA_qb``), zero outside their triangles."""
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
    b_Gpi = b_Gi - tl.load(g + rows_i[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)

    # row side (block i as q / a rows): earlier column blocks through the token r before block i, then the diagonal
    b_dq = tl.zeros([BC, BK], dtype=tl.float32)
    b_da = tl.zeros([BC, BK], dtype=tl.float32)
    if i_i > 0:
        b_Gr = tl.load(G + ((t0 + i_i * BC - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        for i_j in range(0, i_i):
            rows_j = (t0 + i_j * BC + o_c) * H + i_h
            m_jk = (o_c < BC)[:, None] & m_k[None, :]
            b_k, b_Gj = _load_rows(k, G, g, rows_j, m_jk, o_k, K, False)
            b_b = tl.load(b + rows_j[:, None] * K + o_k[None, :], mask=m_jk, other=0).to(tl.float32)
            b_dec = tl.exp(b_Gr[None, :] - b_Gj)
            b_kg, b_bg = b_k * b_dec, b_b * b_dec
            off = rows_i[:, None] * BT + i_j * BC + o_c[None, :]
            m_A = m_i[:, None]
            b_dq += tl.dot(tl.load(dAqk + off, mask=m_A, other=0), b_kg, input_precision=PREC)
            b_dq += tl.dot(tl.load(dAqb + off, mask=m_A, other=0), b_bg, input_precision=PREC)
            b_da += tl.dot(tl.load(dAak + off, mask=m_A, other=0), b_kg, input_precision=PREC)
            b_da += tl.dot(tl.load(dAab + off, mask=m_A, other=0), b_bg, input_precision=PREC)
        b_dq *= tl.exp(tl.minimum(b_Gi - b_Gr[None, :], 0))
        b_da *= tl.exp(tl.minimum(b_Gpi - b_Gr[None, :], 0))
    for j in range(0, BC):  # column j of the diagonal block; the dA are zero above it
        m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # row j exists
        row_j = (t0 + i_i * BC + j) * H + i_h
        b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_bj = tl.load(b + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
        col = rows_i * BT + i_i * BC + j
        b_x = tl.load(dAqk + col, mask=m_i, other=0)[:, None] * b_kj[None, :]
        b_x += tl.load(dAqb + col, mask=m_i, other=0)[:, None] * b_bj[None, :]
        b_dq += b_x * tl.exp(tl.minimum(b_Gi - b_Gj[None, :], 0))
        b_x = tl.load(dAak + col, mask=m_i, other=0)[:, None] * b_kj[None, :]
        b_x += tl.load(dAab + col, mask=m_i, other=0)[:, None] * b_bj[None, :]
        b_da += b_x * tl.exp(tl.minimum(b_Gpi - b_Gj[None, :], 0))

    # column side (block i as k / b columns): later row blocks through the last token e of block i, then the diagonal
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    b_db = tl.zeros([BC, BK], dtype=tl.float32)
    n_blocks = tl.cdiv(n, BC)
    if i_i + 1 < n_blocks:  # then block i is full
        b_Ge = tl.load(G + ((t0 + i_i * BC + BC - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        for i_j in range(i_i + 1, n_blocks):
            m_j = i_j * BC + o_c < n
            m_jk = m_j[:, None] & m_k[None, :]
            rows_j = (t0 + i_j * BC + o_c) * H + i_h
            b_q, b_Gj = _load_rows(q, G, g, rows_j, m_jk, o_k, K, False)
            b_a, b_Gpj = _load_rows(a, G, g, rows_j, m_jk, o_k, K, True)
            b_qg = b_q * tl.exp(tl.minimum(b_Gj - b_Ge[None, :], 0))
            b_ag = b_a * tl.exp(tl.minimum(b_Gpj - b_Ge[None, :], 0))
            offT = rows_j[None, :] * BT + i_i * BC + o_c[:, None]  # [column in block i, row in block j]
            m_AT = m_j[None, :]
            b_dk += tl.dot(tl.load(dAqk + offT, mask=m_AT, other=0), b_qg, input_precision=PREC)
            b_dk += tl.dot(tl.load(dAak + offT, mask=m_AT, other=0), b_ag, input_precision=PREC)
            b_db += tl.dot(tl.load(dAqb + offT, mask=m_AT, other=0), b_qg, input_precision=PREC)
            b_db += tl.dot(tl.load(dAab + offT, mask=m_AT, other=0), b_ag, input_precision=PREC)
        b_dec = tl.exp(b_Ge[None, :] - b_Gi)
        b_dk *= b_dec
        b_db *= b_dec
    for j in range(0, BC):  # row j of the diagonal block
        m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # row j exists
        row_j = (t0 + i_i * BC + j) * H + i_h
        b_qj = tl.load(q + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_aj = tl.load(a + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
        b_Gpj = b_Gj - tl.load(g + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        m_row = o_c < tl.where(i_i * BC + j < n, BC, 0)
        row = row_j * BT + i_i * BC + o_c
        b_wq = b_qj[None, :] * tl.exp(tl.minimum(b_Gj[None, :] - b_Gi, 0))
        b_wa = b_aj[None, :] * tl.exp(tl.minimum(b_Gpj[None, :] - b_Gi, 0))
        b_dk += tl.load(dAqk + row, mask=m_row, other=0)[:, None] * b_wq
        b_dk += tl.load(dAak + row, mask=m_row, other=0)[:, None] * b_wa
        b_db += tl.load(dAqb + row, mask=m_row, other=0)[:, None] * b_wq
        b_db += tl.load(dAab + row, mask=m_row, other=0)[:, None] * b_wa

    off = rows_i[:, None] * K + o_k[None, :]
    tl.store(dq + off, tl.load(dq + off, mask=m_ik, other=0) + b_dq, mask=m_ik)
    tl.store(da + off, tl.load(da + off, mask=m_ik, other=0) + b_da, mask=m_ik)
    tl.store(dk + off, tl.load(dk + off, mask=m_ik, other=0) + b_dk, mask=m_ik)
    tl.store(db + off, tl.load(db + off, mask=m_ik, other=0) + b_db, mask=m_ik)
