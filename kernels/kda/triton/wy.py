"""The WY / UT representation of a KDA chunk in Triton: forward and backward.

Inside a chunk of ``BT`` tokens (cut per sequence; see ``kernels/triton_utils.py``) with chunk-local cumulative
log decay ``G [BT, K]`` (one column per key channel) and the decayed key products of ``intra.py``
``Akk_ij = sum_c k_ic k_jc exp(G_ic - G_jc)`` (``j < i``)::

    M  = diag(beta) Akk                           strictly lower
    Ai = (I + M)^{-1}                             unit lower triangular
    W  = Ai (beta * exp(G) * K),   U = Ai (beta * V)

so that the pseudo-values written by the chunk are ``V' = U - W S`` for the state ``S`` entering it (see
``../README.md``). ``Ai`` is kept (fp32 ``[B*T, H, BT]``, row ``i`` of a chunk holds ``Ai[i, :]``; entries above
the diagonal are never read) for the backward, which recomputes ``W`` and ``U``.

Kernels (grid in brackets; NT chunks in all):

``_fwd_solve``  [NT, H]   ``Ai`` by 16 x 16 sub-blocks: each diagonal block ``(I + M_ii)^{-1}`` by forward
                          substitution (one row at a time, in registers), then the blocks below the diagonal,
                          block row by block row, ``X_ij = -X_ii sum_{j <= l < i} M_il X_lj`` (``tl.dot``; the
                          ``X_lj`` of earlier block rows are read back from ``Ai``).
``_fwd_wu``     [NT, H]   ``W`` and ``U`` (fp32) from ``Ai``.
``_bwd_wy``     [NT, H]   given ``dU = dV'`` and ``dW`` (from ``chunk.py``): ``dAi = dU (beta V)^T + dW
                          (beta e^G K)^T``, ``dM = -Ai^T dAi Ai^T`` (strictly lower); the final ``dv`` and
                          ``dbeta``; adds ``beta e^G (Ai^T dW)`` to ``dk`` and its gate term to ``dG``; overwrites
                          ``Akk`` with ``dAkk = diag(beta) dM`` for ``intra._bwd_intra``.

The products here take fp32 operands (``input_precision`` ``PREC``: exact fp32 for fp32 inputs, TF32 tensor
cores otherwise): the triangular inverse and its adjoint are the numerically delicate part.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import chunk_span, load_tril

__all__ = []  # kernels only; launched from kernels.kda.triton.chunk


@triton.jit
def _fwd_solve(
    Akk,
    beta,
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
            b_beta = tl.load(beta + rows_i, mask=m_i, other=0).to(tl.float32)
            # diagonal block: X = (I + N)^{-1} for N = M_ii strictly lower, row by row. b holds X - I; row r is
            # -N_r + sum_{j<r} (-N_rj) (X_j - e_j), where -N_rj vanishes for j >= r (rows not yet replaced)
            b_x = -tl.load(Akk + rows_i[:, None] * BT + bi * BC + o_c[None, :], mask=m_i[:, None], other=0)
            b_x *= b_beta[:, None]
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
                    b_m = tl.load(Akk + rows_i[:, None] * BT + bl * BC + o_c[None, :], mask=m_i[:, None], other=0)
                    rows_l = (t0 + bl * BC + o_c) * H + i_h
                    b_xlj = tl.load(Ai + rows_l[:, None] * BT + bj * BC + o_c[None, :])  # block row bl is full
                    b_acc += tl.dot(b_m * b_beta[:, None], b_xlj, input_precision=PREC)
                b_xij = -tl.dot(b_xii, b_acc, input_precision=PREC)
                tl.store(Ai + rows_i[:, None] * BT + bj * BC + o_c[None, :], b_xij, mask=m_i[:, None])
        tl.debug_barrier()  # block row bi is in Ai before the next block row reads it


@triton.jit
def _fwd_wu(
    k,
    v,
    beta,
    G,
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
    b_beta = tl.load(beta + rows, mask=m_t, other=0).to(tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        off = rows[:, None] * K + o_k[None, :]
        b_k = tl.load(k + off, mask=m_tk, other=0).to(tl.float32)
        b_G = tl.load(G + off, mask=m_tk, other=0)
        b_w = tl.dot(b_ai, b_k * tl.exp(b_G) * b_beta[:, None], input_precision=PREC)
        tl.store(w + off, b_w, mask=m_tk)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(tl.float32)
        b_u = tl.dot(b_ai, b_v * b_beta[:, None], input_precision=PREC)
        tl.store(u + rows[:, None] * V + o_v[None, :], b_u, mask=m_tv)


@triton.jit
def _bwd_wy(
    k,
    v,
    beta,
    G,
    Ai,
    Akk,
    dvn,
    dw,
    dk_part,
    dG,
    dv,
    dbeta,
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
    b_beta = tl.load(beta + rows, mask=m_t, other=0).to(tl.float32)

    # dAi = dU (beta V)^T + dW (beta e^G K)^T
    b_dai = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_du = tl.load(dvn + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(tl.float32)
        b_dai += tl.dot(b_du, tl.trans(b_v * b_beta[:, None]), input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        off = rows[:, None] * K + o_k[None, :]
        b_dw = tl.load(dw + off, mask=m_tk, other=0)
        b_k = tl.load(k + off, mask=m_tk, other=0).to(tl.float32)
        b_G = tl.load(G + off, mask=m_tk, other=0)
        b_dai += tl.dot(b_dw, tl.trans(b_k * tl.exp(b_G) * b_beta[:, None]), input_precision=PREC)

    # dM = -Ai^T dAi Ai^T on the strict lower triangle: Ai moves only there when M does (its unit diagonal and
    # zero upper triangle are fixed), so only that part of dAi counts
    strict = (o_t[:, None] > o_t[None, :]) & m_t[:, None]
    b_aiT = load_tril(Ai, rows, n, BT, False, True)
    b_dai = tl.where(strict, b_dai, 0)
    b_dm = -tl.dot(tl.dot(b_aiT, b_dai, input_precision=PREC), b_aiT, input_precision=PREC)
    b_dm = tl.where(strict, b_dm, 0)
    b_akk = tl.load(Akk + rows[:, None] * BT + o_t[None, :], mask=strict, other=0)
    b_dbeta = tl.sum(b_dm * b_akk, 1)
    # Akk is not needed again: its buffer takes dAkk = dL/dAkk (all BT columns of valid rows, 0 off the triangle)
    tl.store(Akk + rows[:, None] * BT + o_t[None, :], b_dm * b_beta[:, None], mask=m_t[:, None])

    # dv = beta (Ai^T dU); dk += beta e^G (Ai^T dW), whose gate term is k . that
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_du = tl.load(dvn + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(tl.float32)
        b_dvb = tl.dot(b_aiT, b_du, input_precision=PREC)
        b_dbeta += tl.sum(b_v * b_dvb, 1)
        tl.store(dv + rows[:, None] * V + o_v[None, :], (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        off = rows[:, None] * K + o_k[None, :]
        b_dw = tl.load(dw + off, mask=m_tk, other=0)
        b_k = tl.load(k + off, mask=m_tk, other=0).to(tl.float32)
        b_G = tl.load(G + off, mask=m_tk, other=0)
        b_dkb = tl.exp(b_G) * tl.dot(b_aiT, b_dw, input_precision=PREC)  # e^G (Ai^T dW)
        b_dbeta += tl.sum(b_k * b_dkb, 1)
        b_dkw = b_dkb * b_beta[:, None]
        tl.store(dk_part + off, tl.load(dk_part + off, mask=m_tk, other=0) + b_dkw, mask=m_tk)
        tl.store(dG + off, tl.load(dG + off, mask=m_tk, other=0) + b_k * b_dkw, mask=m_tk)
    tl.store(dbeta + rows, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
