"""The WY / UT representation of a chunk of the (gated) delta rule in Triton: forward and backward.

Inside a chunk of ``BT`` tokens (cut per sequence; see ``kernels/triton_utils.py``) with chunk-local cumulative
log decay ``G`` (``G = 0`` for the plain delta rule) and ``Gamma_ij = exp(G_i - G_j)`` for ``j <= i``::

    M  = tril(diag(beta) (K K^T * Gamma), -1)     strictly lower, |M_ij| <= 1 for unit keys
    Ai = (I + M)^{-1}                             unit lower triangular
    W  = Ai (beta * exp(G) * K),   U = Ai (beta * V)

so that the pseudo-values written by the chunk are ``V' = U - W S`` for the state ``S`` entering it (see
``kernels/delta_rule/README.md``). ``Ai`` is kept (fp32 ``[B*T, H, BT]``, row ``i`` of a chunk holds
``Ai[i, :]``; entries above the diagonal are never read) for the backward, which recomputes ``W`` and ``U``.

Kernels (grid in brackets; NT chunks in all):

``_fwd_solve``  [NT, H]   ``Ai`` by 16 x 16 sub-blocks: each diagonal block ``(I + M_ii)^{-1}`` by forward
                          substitution (one row at a time, in registers), then the blocks below the diagonal,
                          block row by block row, ``X_ij = -X_ii sum_{j <= l < i} M_il X_lj`` (``tl.dot``; the
                          ``X_lj`` of earlier block rows are read back from ``Ai``).
``_fwd_wu``     [NT, H]   ``W`` and ``U`` (fp32) from ``Ai``.
``_bwd_wy``     [NT, H]   given ``dU = dV'`` and ``dW`` (from ``chunk.py``):
                          ``dAi = dU (beta V)^T + dW (beta e^G K)^T``, ``dM = -Ai^T dAi Ai^T`` (strictly lower),
                          then the final ``dk``, ``dv``, ``dbeta`` and, for the gated rule, ``dg`` (the
                          chunk-local reverse cumsum of ``dG``; see ``chunk.py``).

All ``exp`` arguments are ``<= 0``: ``Gamma`` is built with ``-inf`` outside the (strict) causal triangle. The
products in these kernels take fp32 operands (``input_precision`` ``PREC``: exact fp32 for fp32 inputs, TF32
tensor cores otherwise): the triangular inverse and its adjoint are the numerically delicate part, and at
``O(BT^2 (K + V))`` per chunk they cost no more than one of the chunk kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.triton_utils import causal_decay, chunk_span, load_tril

__all__ = []  # kernels only; launched from kernels.delta_rule.triton.chunk


@triton.jit
def _gate(G, t0, n, i_h, H: tl.constexpr, BT: tl.constexpr, GATED: tl.constexpr):
    """Cumulative log decay of a chunk: ``G [BT]`` (0 on rows past its end, and everywhere without a gate)
    and ``G_L``, its value at the chunk's last token."""
    o_t = tl.arange(0, BT)
    b_G = tl.load(G + (t0 + o_t) * H + i_h, mask=o_t < n, other=0) if GATED else tl.zeros([BT], dtype=tl.float32)
    b_GL = tl.sum(tl.where(o_t == n - 1, b_G, 0), axis=0)
    return b_G, b_GL


@triton.jit
def _kkt_block(
    k,
    beta,
    G,
    t0,
    n,
    i_h,
    bi,
    bj,
    H: tl.constexpr,
    K: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    GATED: tl.constexpr,
    PREC: tl.constexpr,
):
    """Sub-block ``(bi, bj)`` (16 x 16, ``bi >= bj``) of ``M = tril(diag(beta) (K K^T * Gamma), -1)``, fp32."""
    o_c = tl.arange(0, BC)
    r_i, r_j = bi * BC + o_c, bj * BC + o_c  # chunk rows of the two blocks
    m_i, m_j = r_i < n, r_j < n
    rows_i, rows_j = (t0 + r_i) * H + i_h, (t0 + r_j) * H + i_h
    b_kk = tl.zeros([BC, BC], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_ki = tl.load(k + rows_i[:, None] * K + o_k[None, :], mask=m_i[:, None] & m_k[None, :], other=0)
        b_kjT = tl.load(k + rows_j[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_j[None, :], other=0)
        b_kk += tl.dot(b_ki.to(tl.float32), b_kjT.to(tl.float32), input_precision=PREC)
    b_beta = tl.load(beta + rows_i, mask=m_i, other=0).to(tl.float32)
    keep = (r_i[:, None] > r_j[None, :]) & m_i[:, None] & m_j[None, :]
    if GATED:
        b_Gi = tl.load(G + rows_i, mask=m_i, other=0)
        b_Gj = tl.load(G + rows_j, mask=m_j, other=0)
        b_kk *= tl.exp(tl.where(keep, b_Gi[:, None] - b_Gj[None, :], float("-inf")))
    return tl.where(keep, b_kk * b_beta[:, None], 0)


@triton.jit
def _fwd_solve(
    k,
    beta,
    G,
    Ai,
    cu,
    chunk_indices,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    NC: tl.constexpr,
    GATED: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_c = tl.arange(0, BC)
    for bi in tl.static_range(NC):
        if bi * BC < n:
            m_i = bi * BC + o_c < n
            rows_i = (t0 + bi * BC + o_c) * H + i_h
            # diagonal block: X = (I + N)^{-1} for N = M_ii strictly lower, row by row. b holds X - I; row r is
            # -N_r + sum_{j<r} (-N_rj) (X_j - e_j), where -N_rj vanishes for j >= r (rows not yet replaced)
            b_x = -_kkt_block(k, beta, G, t0, n, i_h, bi, bi, H, K, BC, BK, GATED, PREC)
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
                    b_m = _kkt_block(k, beta, G, t0, n, i_h, bi, bl, H, K, BC, BK, GATED, PREC)
                    rows_l = (t0 + bl * BC + o_c) * H + i_h
                    b_xlj = tl.load(Ai + rows_l[:, None] * BT + bj * BC + o_c[None, :])  # block row bl is full
                    b_acc += tl.dot(b_m, b_xlj, input_precision=PREC)
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
    GATED: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    rows = (t0 + o_t) * H + i_h
    b_ai = load_tril(Ai, rows, n, BT, False, False)
    b_beta = tl.load(beta + rows, mask=m_t, other=0).to(tl.float32)
    b_G, _ = _gate(G, t0, n, i_h, H, BT, GATED)
    b_kscale = b_beta * tl.exp(b_G)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
        b_w = tl.dot(b_ai, b_k * b_kscale[:, None], input_precision=PREC)
        tl.store(w + rows[:, None] * K + o_k[None, :], b_w, mask=m_tk)
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
    dvn,
    dw,
    dk_part,
    dgx,
    dk,
    dv,
    dbeta,
    dg,
    cu,
    chunk_indices,
    dgx_stride,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NKX: tl.constexpr,
    GATED: tl.constexpr,
    HAS_DG: tl.constexpr,
    PREC: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    rows = (t0 + o_t) * H + i_h
    b_beta = tl.load(beta + rows, mask=m_t, other=0).to(tl.float32)
    b_G, _ = _gate(G, t0, n, i_h, H, BT, GATED)
    b_eg = tl.exp(b_G)
    b_kscale = b_beta * b_eg

    # dAi = dU (beta V)^T + dW (beta e^G K)^T, and K K^T for M
    b_dai = tl.zeros([BT, BT], dtype=tl.float32)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_du = tl.load(dvn + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(tl.float32)
        b_dai += tl.dot(b_du, tl.trans(b_v * b_beta[:, None]), input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_dw = tl.load(dw + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
        b_dai += tl.dot(b_dw, tl.trans(b_k * b_kscale[:, None]), input_precision=PREC)
        b_kk += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)

    # dM = -Ai^T dAi Ai^T on the strict lower triangle (only there does M vary; Ai's unit diagonal is constant)
    b_aiT = load_tril(Ai, rows, n, BT, False, True)
    b_dai = tl.where((o_t[:, None] > o_t[None, :]) & m_t[:, None], b_dai, 0)
    b_dm = -tl.dot(tl.dot(b_aiT, b_dai, input_precision=PREC), b_aiT, input_precision=PREC)
    b_dmg = b_dm * causal_decay(b_G, n, BT, True, False)  # dM_ij Gamma_ij, strictly lower
    b_dkk = b_dmg * b_beta[:, None]  # dL/d(k_i . k_j) for j < i
    b_dmkk = b_dmg * b_kk
    b_dbeta = tl.sum(b_dmkk, 1)
    b_dG = tl.zeros([BT], dtype=tl.float32)
    if HAS_DG:  # M_ij depends on G_i - G_j: dG_i += sum_j dM_ij M_ij, dG_j -= sum_i dM_ij M_ij
        b_e = b_dmkk * b_beta[:, None]
        b_dG += tl.sum(b_e, 1) - tl.sum(b_e, 0)

    # dv = beta (Ai^T dU); dk = dk_part + beta e^G (Ai^T dW) + (dKK + dKK^T) K
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
        b_dkb = tl.dot(b_aiT, b_dw, input_precision=PREC)
        b_s = tl.sum(b_k * b_dkb, 1) * b_eg
        b_dbeta += b_s
        if HAS_DG:
            b_dG += b_s * b_beta
        b_dk = tl.load(dk_part + off, mask=m_tk, other=0) + b_dkb * b_kscale[:, None]
        b_dk += tl.dot(b_dkk, b_k, input_precision=PREC) + tl.dot(tl.trans(b_dkk), b_k, input_precision=PREC)
        tl.store(dk + off, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + rows, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    if HAS_DG:  # plus the K tiles' shares from the chunk kernels; G is a chunk-local cumsum of g
        p_x = dgx + rows
        for _ in range(0, NKX):
            b_dG += tl.load(p_x, mask=m_t, other=0)
            p_x += dgx_stride
        tl.store(dg + rows, tl.cumsum(b_dG, axis=0, reverse=True).to(dg.dtype.element_ty), mask=m_t)
