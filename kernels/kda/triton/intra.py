"""The intra-chunk pair terms of KDA in Triton, whose decay differs per key channel: forward and backward.

In a chunk with chunk-local cumulative log decay ``G [BT, K]`` (per channel, non-increasing in time)::

    Aqk_ij = scale sum_c q_ic k_jc exp(G_ic - G_jc)    (j <= i)   the scores of the output
    Akk_ij =       sum_c k_ic k_jc exp(G_ic - G_jc)    (j <  i)   the key products of the WY system (wy.py)

The decay differs per channel, so neither is a matmul of ``[BT, BT]`` decays, and ``exp(G_i) exp(-G_j)``
overflows under strong decay. The chunk is cut into 16-row sub-blocks. For a row block ``I`` after a column
block ``J``, with ``r`` the first row of ``I``, ``exp(G_i - G_j) = exp(G_i - G_r) exp(G_r - G_j)``: both
factors have exponents ``<= 0`` (``i >= r > j``), and the pair sum is one ``tl.dot`` of the two decayed
operands. Diagonal sub-blocks are summed exactly, one column row at a time, with the exponent clamped to
``<= 0`` before ``exp`` (it matters only on the masked, non-causal side). In the backward the reference for a
key block ``I`` before a query block ``J`` is the last row ``e`` of ``I`` instead: ``exp(G_j - G_e) exp(G_e -
G_i)``. Rows past the chunk's end load ``G = 0`` and are masked; the clamp keeps their exponents finite.

Kernels (grid in brackets; NT chunks, NC = BT / 16 sub-blocks, NK tiles of K):

``_fwd_intra``  [NT, NC*NC, H]  one sub-block pair ``(I, J)``, ``J <= I``, of ``Aqk`` and ``Akk`` (fp32 ``[B*T,
                                H, BT]``; the blocks above the diagonal are never written or read)
``_bwd_intra``  [NT, NK, H]     from ``dA = dL/dAqk * scale`` and ``dAkk = dL/dAkk``:
                                ``dq_i += sum_{j<=i} dA_ij k_j e^{G_i-G_j}``,
                                ``dk_j += sum_{i>=j} dA_ij q_i e^{G_i-G_j} + sum_{i>j} dAkk_ij k_i e^{G_i-G_j}``
                                (the column side), ``dk_i += sum_{j<i} dAkk_ij k_j e^{G_i-G_j}`` (the row side);
                                adds all partials and writes the final ``dq``, ``dk`` and ``dg`` (the
                                reverse cumsum of ``dG`` inside the chunk, sub-block by sub-block from the end)

The gate term (see ``chunk.py``): a factor ``x_i e^{G_i}`` contributes ``+x ⊙ dx`` to ``dG_i`` and a factor
``x_j e^{-G_j}`` contributes ``-x ⊙ dx`` to ``dG_j``, so ``_bwd_intra`` adds ``q ⊙ dq_intra + k ⊙ (row side -
column side)``, leaving out the diagonal of ``Aqk`` (no decay; its two terms cancel exactly), which joins ``dq``
and ``dk`` only.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import chunk_span

__all__ = []  # kernels only; launched from kernels.kda.triton.chunk


@triton.jit
def _fwd_intra(
    q,
    k,
    G,
    Aqk,
    Akk,
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
    i_i, i_j = i_ij // NC, i_ij % NC  # row sub-block, column sub-block
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    if i_i < i_j or i_i * BC >= n:  # above the diagonal (never read) or past the sequence end
        return
    o_c = tl.arange(0, BC)
    m_i = i_i * BC + o_c < n
    rows_i = (t0 + i_i * BC + o_c) * H + i_h
    b_aq = tl.zeros([BC, BC], dtype=tl.float32)
    b_ak = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_ik = m_i[:, None] & m_k[None, :]
        off_i = rows_i[:, None] * K + o_k[None, :]
        b_q = tl.load(q + off_i, mask=m_ik, other=0).to(tl.float32)
        b_k = tl.load(k + off_i, mask=m_ik, other=0).to(tl.float32)
        b_Gi = tl.load(G + off_i, mask=m_ik, other=0)
        if i_i > i_j:  # every row of block J is valid (it precedes a valid row of block I)
            rows_j = (t0 + i_j * BC + o_c) * H + i_h
            b_Gr = tl.load(G + ((t0 + i_i * BC) * H + i_h) * K + o_k, mask=m_k, other=0)
            b_di = tl.exp(tl.minimum(b_Gi - b_Gr[None, :], 0))
            b_kjT = tl.load(k + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0).to(tl.float32)
            b_GjT = tl.load(G + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None], other=0)
            b_kjT *= tl.exp(b_Gr[:, None] - b_GjT)
            b_aq += tl.dot((b_q * b_di).to(DT), b_kjT.to(DT), input_precision=PREC)
            b_ak += tl.dot(b_k * b_di, b_kjT, input_precision=PREC)  # fp32 operands: it feeds the inverse
        else:
            for j in range(0, BC):
                m_j = o_k < tl.where(i_i * BC + j < n, K, 0)  # column row j exists
                row_j = (t0 + i_i * BC + j) * H + i_h
                b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
                b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
                b_w = b_kj[None, :] * tl.exp(tl.minimum(b_Gi - b_Gj[None, :], 0))
                b_aq += tl.where(o_c[None, :] == j, tl.sum(b_q * b_w, 1)[:, None], 0)
                b_ak += tl.where(o_c[None, :] == j, tl.sum(b_k * b_w, 1)[:, None], 0)
    if i_i == i_j:
        b_aq = tl.where(o_c[:, None] >= o_c[None, :], b_aq, 0)
        b_ak = tl.where(o_c[:, None] > o_c[None, :], b_ak, 0)
    off_a = rows_i[:, None] * BT + i_j * BC + o_c[None, :]
    tl.store(Aqk + off_a, b_aq * scale, mask=m_i[:, None])
    tl.store(Akk + off_a, b_ak, mask=m_i[:, None])


@triton.jit
def _bwd_intra(
    q,
    k,
    G,
    dA,
    dAkk,
    dq_part,
    dk_part,
    dG_part,
    dq,
    dk,
    dg,
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
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    n_blocks = tl.cdiv(n, BC)
    o_c = tl.arange(0, BC)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    b_carry = tl.zeros([BK], dtype=tl.float32)  # sum of dG over the later sub-blocks of the chunk
    for i_r in tl.static_range(NC):
        i_i = NC - 1 - i_r  # from the last sub-block: the reverse cumsum carries backwards
        if i_i * BC < n:
            m_i = i_i * BC + o_c < n
            m_ik = m_i[:, None] & m_k[None, :]
            rows_i = (t0 + i_i * BC + o_c) * H + i_h
            off_i = rows_i[:, None] * K + o_k[None, :]
            b_qi = tl.load(q + off_i, mask=m_ik, other=0).to(tl.float32)
            b_ki = tl.load(k + off_i, mask=m_ik, other=0).to(tl.float32)
            b_Gi = tl.load(G + off_i, mask=m_ik, other=0)
            b_dq = tl.zeros([BC, BK], dtype=tl.float32)  # through Aqk, as its row (query) side
            b_dkr = tl.zeros([BC, BK], dtype=tl.float32)  # through Akk, as its row side
            b_dkc = tl.zeros([BC, BK], dtype=tl.float32)  # through Aqk and Akk, as their column (key) side

            # earlier column blocks, through the first row r of block I
            if i_i > 0:
                b_Gr = tl.load(G + ((t0 + i_i * BC) * H + i_h) * K + o_k, mask=m_k, other=0)
                for i_j in range(0, i_i):
                    rows_j = (t0 + i_j * BC + o_c) * H + i_h
                    off_j = rows_j[:, None] * K + o_k[None, :]
                    b_kj = tl.load(k + off_j, mask=m_k[None, :], other=0).to(tl.float32)
                    b_kj *= tl.exp(b_Gr[None, :] - tl.load(G + off_j, mask=m_k[None, :], other=0))
                    off_a = rows_i[:, None] * BT + i_j * BC + o_c[None, :]
                    b_dA = tl.load(dA + off_a, mask=m_i[:, None], other=0)
                    b_dM = tl.load(dAkk + off_a, mask=m_i[:, None], other=0)
                    b_dq += tl.dot(b_dA.to(DT), b_kj.to(DT), input_precision=PREC)
                    b_dkr += tl.dot(b_dM, b_kj, input_precision=PREC)
                b_di = tl.exp(tl.minimum(b_Gi - b_Gr[None, :], 0))
                b_dq *= b_di
                b_dkr *= b_di
            # later row blocks, through the last row e of block I (then block I is full)
            if i_i + 1 < n_blocks:
                b_Ge = tl.load(G + ((t0 + i_i * BC + BC - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
                for i_j in range(i_i + 1, n_blocks):
                    m_j = i_j * BC + o_c < n
                    m_jk = m_j[:, None] & m_k[None, :]
                    rows_j = (t0 + i_j * BC + o_c) * H + i_h
                    off_j = rows_j[:, None] * K + o_k[None, :]
                    b_dj = tl.exp(tl.minimum(tl.load(G + off_j, mask=m_jk, other=0) - b_Ge[None, :], 0))
                    b_qj = tl.load(q + off_j, mask=m_jk, other=0).to(tl.float32) * b_dj
                    b_kj = tl.load(k + off_j, mask=m_jk, other=0).to(tl.float32) * b_dj
                    off_aT = rows_j[None, :] * BT + i_i * BC + o_c[:, None]  # [column in I, row in J]
                    b_dAT = tl.load(dA + off_aT, mask=m_j[None, :], other=0)
                    b_dMT = tl.load(dAkk + off_aT, mask=m_j[None, :], other=0)
                    b_dkc += tl.dot(b_dAT.to(DT), b_qj.to(DT), input_precision=PREC)
                    b_dkc += tl.dot(b_dMT, b_kj, input_precision=PREC)
                b_dkc *= tl.exp(tl.minimum(b_Ge[None, :] - b_Gi, 0))
            # the diagonal block, exactly, one row j at a time: as a column (i >= j) and as a row (i <= j)
            for j in range(0, BC):
                has_j = i_i * BC + j < n
                m_j = o_k < tl.where(has_j, K, 0)
                row_j = (t0 + i_i * BC + j) * H + i_h
                b_qj = tl.load(q + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
                b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
                b_Gj = tl.load(G + row_j * K + o_k, mask=m_j, other=0)
                b_dAc = tl.load(dA + rows_i * BT + i_i * BC + j, mask=m_i, other=0)  # dA[i, j], i in block I
                b_dMc = tl.load(dAkk + rows_i * BT + i_i * BC + j, mask=m_i, other=0)
                m_row = o_c < tl.where(has_j, BC, 0)
                b_dAr = tl.load(dA + row_j * BT + i_i * BC + o_c, mask=m_row, other=0)  # dA[j, i], i in block I
                b_dMr = tl.load(dAkk + row_j * BT + i_i * BC + o_c, mask=m_row, other=0)
                b_kw = b_kj[None, :] * tl.exp(tl.minimum(b_Gi - b_Gj[None, :], 0))  # k_j e^{G_i - G_j}, i >= j
                b_dq += tl.where(o_c[:, None] > j, b_dAc[:, None] * b_kw, 0)
                b_dkr += tl.where(o_c[:, None] > j, b_dMc[:, None] * b_kw, 0)
                b_e = tl.exp(tl.minimum(b_Gj[None, :] - b_Gi, 0))  # e^{G_j - G_i}, i <= j
                b_dkc += tl.where(o_c[:, None] < j, b_dAr[:, None] * b_qj[None, :] * b_e, 0)
                b_dkc += tl.where(o_c[:, None] < j, b_dMr[:, None] * b_kj[None, :] * b_e, 0)

            b_dG = tl.load(dG_part + off_i, mask=m_ik, other=0) + b_qi * b_dq + b_ki * (b_dkr - b_dkc)
            # the diagonal of Aqk has no decay: its +q dq and -k dk gate terms cancel, so it joins dq, dk only
            b_dAd = tl.load(dA + rows_i * BT + i_i * BC + o_c, mask=m_i, other=0)[:, None]
            b_dq += tl.load(dq_part + off_i, mask=m_ik, other=0) + b_dAd * b_ki
            b_dk = tl.load(dk_part + off_i, mask=m_ik, other=0) + b_dkr + b_dkc + b_dAd * b_qi
            b_dg = tl.cumsum(b_dG, axis=0, reverse=True) + b_carry[None, :]
            b_carry += tl.sum(b_dG, 0)
            tl.store(dq + off_i, b_dq.to(dq.dtype.element_ty), mask=m_ik)
            tl.store(dk + off_i, b_dk.to(dk.dtype.element_ty), mask=m_ik)
            tl.store(dg + off_i, b_dg.to(dg.dtype.element_ty), mask=m_ik)
