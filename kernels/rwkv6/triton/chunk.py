"""Chunkwise RWKV-6 in Triton: forward and backward kernels behind one ``torch.autograd.Function``.

Per sequence and head, time is cut into chunks of ``BT`` tokens (chunks never cross a sequence boundary;
see ``kernels/triton_utils.py``). Inside a chunk of ``n`` tokens, with ``S`` the state entering it::

    o_i    = scale * [(r_i * exp(X_i)) S + sum_{j < i} A'_ij v_j + (r_i . u . k_i) v_i]
    S_next = exp(W) * S + (k * exp(Z))^T v

    X_i = w_0 + ... + w_{i-1}          (decay from the chunk start up to, not including, token i)
    Z_j = w_{j+1} + ... + w_{n-1}      (decay from after token j to the chunk end)
    W   = w_0 + ... + w_{n-1}
    A'_ij = sum_k r_ik k_jk exp(w_{j+1,k} + ... + w_{i-1,k})   (j < i; the pair decay skips both ends)

Stability and accuracy: every decay is a sum of ``w`` over a window, accumulated from the window's own
start (a cumsum of ``w`` loaded one row shifted, ``_prefix`` / ``_suffix``), never a difference of two
cumulative sums (``W`` is ``w_0 + Z_0``). So no ``exp`` of a positive number is taken (for ``w <= 0``) and
the rounding error of an exponent is relative to that exponent, not to the decay of the whole chunk: a
pair of neighbours gets a decay of exactly 1 even when the chunk decays by ``exp(-2000)``. The intra-chunk
scores are built on 16 x 16 sub-blocks: for a query block starting at row ``s`` and any earlier key ``j < s``,
``exp(w_{j+1} + ... + w_{i-1}) = exp(w_s + ... + w_{i-1}) * exp(w_{j+1} + ... + w_{s-1})`` (both factors
<= 1, one ``tl.dot`` against all earlier keys of the chunk); inside a diagonal sub-block the pair decays
are running sums of ``w``, one key (or query) row at a time.

Kernels (grid in brackets; NT chunks in all, N sequences, NC = BT / 16 sub-blocks, NK / NV tiles of K / V):

forward
    ``_decays``     [NT, NK, H]     X and Z (fp32 ``[B, T, H, K]``), each a (reverse) cumsum inside the chunk
    ``_fwd_state``  [N*H, NK, NV]   loop over the sequence's chunks: store the state entering each chunk
                                    (fp32 ``hs [NT, H, K, V]``) and the final state
    ``_fwd_A``      [NT, NC, H]     intra-chunk scores ``A = scale * A'`` with the bonus on the diagonal
                                    (fp32 ``[B*T, H, BT]``, rows of one query sub-block)
    ``_fwd_o``      [NT, NV, H]     o = scale (r * exp(X)) hs + A v
backward (X, Z, hs and A are recomputed rather than stored by the forward)
    ``_bwd_state``  [N*H, NK, NV]   reverse loop: dhs[c] = dL/d(state after chunk c),
                                    dS <- exp(W) * dS + scale (r * exp(X))^T do; the last one is dh0
    ``_bwd_dA``     [NT, H]         dA_ij = scale do_i . v_j  (j <= i)
    ``_bwd_dv``     [NT, NV, H]     dv = A^T do + (k * exp(Z)) dhs
    ``_bwd_intra``  [NT*NC, NK, H]  dr_i = sum_{j<i} dA_ij k_j exp(..),  dk_j = sum_{i>j} dA_ij r_i exp(..)
    ``_bwd_inter``  [NT, NK, H]     dr += scale exp(X) (do hs^T), dk += exp(Z) (v dhs^T); dw (below); then
                                    the bonus: dr += dA_ii u k, dk += dA_ii u r, du += dA_ii r k

dw, chunk by chunk (derivation in README.md): with ``dr``, ``dk`` the gradients without the bonus term,
``a = r * dr``, ``b = k * dk`` and ``dS'`` = dL/d(state after the chunk),

    dw_s = sum_{t > s} a_t - sum_{t >= s} b_t + c,    c = exp(W) * sum_v(dS' * S) + sum_t k_t * exp(Z_t) (v_t dS'^T)

(``c = sum_v dS' * S_next``). Only sums inside one chunk, so fp32 cancellation stays bounded by the chunk.

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
    chunk_span,
    dot_dtype,
    dot_precision,
    num_warps,
    prepare_chunks,
)

__all__ = ["chunk_rwkv6_fwd", "chunk_rwkv6_bwd", "ChunkRWKV6Function"]

BC = 16
"""Sub-block size inside a chunk: the smallest ``tl.dot`` tile."""

MAX_TILE = 64
"""Largest K / V tile; larger head dims loop over (or launch more programs for) several tiles."""


# ----------------------------------------------------------------------------------------------- helpers


@triton.jit
def _prefix(w, rows, o, lo, hi, o_k, m_k, H: tl.constexpr, K: tl.constexpr):
    """fp32 ``[len(o), BK]``: row ``i`` holds ``sum of w_s over lo <= s < min(i, hi)`` (chunk-local positions;
    ``rows`` are the token-head rows of the positions ``o``). A cumsum of w loaded one row earlier."""
    m = ((o - 1 >= lo) & (o - 1 < hi))[:, None] & m_k[None, :]
    x = tl.load(w + (rows[:, None] - H) * K + o_k[None, :], mask=m, other=0).to(tl.float32)
    return tl.cumsum(x, axis=0)


@triton.jit
def _suffix(w, rows, o, lo, hi, o_k, m_k, H: tl.constexpr, K: tl.constexpr):
    """fp32 ``[len(o), BK]``: row ``j`` holds ``sum of w_s over max(j + 1, lo) <= s < hi``. A reverse cumsum of
    w loaded one row later."""
    m = ((o + 1 >= lo) & (o + 1 < hi))[:, None] & m_k[None, :]
    x = tl.load(w + (rows[:, None] + H) * K + o_k[None, :], mask=m, other=0).to(tl.float32)
    return tl.cumsum(x, axis=0, reverse=True)


@triton.jit
def _chunk_total(w, Z, row0, o_k, m_k, K: tl.constexpr):
    """fp32 ``[BK]``: the decay of the whole chunk, ``w_0 + Z_0`` (``row0`` is the first token-head row)."""
    b_w0 = tl.load(w + row0 * K + o_k, mask=m_k, other=0).to(tl.float32)
    return b_w0 + tl.load(Z + row0 * K + o_k, mask=m_k, other=0)


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _decays(w, X, Z, cu, chunk_indices, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    i_c, i_k, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    rows = (t0 + o_t) * H + i_h
    off = rows[:, None] * K + o_k[None, :]
    m = (o_t < n)[:, None] & m_k[None, :]
    tl.store(X + off, _prefix(w, rows, o_t, 0, n, o_k, m_k, H, K), mask=m)
    tl.store(Z + off, _suffix(w, rows, o_t, 0, n, o_k, m_k, H, K), mask=m)


@triton.jit
def _fwd_state(
    k,
    v,
    w,
    Z,
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
        rows = (t0 + o_t) * H + i_h
        m_kt = m_k[:, None] & m_t[None, :]
        off_T = rows[None, :] * K + o_k[:, None]  # [BK, BT]: keys transposed
        b_kT = tl.load(k + off_T, mask=m_kt, other=0).to(tl.float32)
        b_ZT = tl.load(Z + off_T, mask=m_kt, other=0)
        b_W = _chunk_total(w, Z, t0 * H + i_h, o_k, m_k, K)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_kdT = (b_kT * tl.exp(b_ZT)).to(DT)  # keys decayed to the chunk end
        b_h = b_h * tl.exp(b_W)[:, None] + tl.dot(b_kdT, b_v.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


@triton.jit
def _fwd_A(
    r,
    k,
    w,
    u,
    A,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
    BK: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_i, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    s0 = i_i * BC  # first row of this query sub-block: the reference point of the off-diagonal decays
    if s0 >= n:
        return
    o_c = tl.arange(0, BC)
    o_t = tl.arange(0, BT)
    m_i = s0 + o_c < n
    rows_i = (t0 + s0 + o_c) * H + i_h  # [BC] token-head rows of the query block
    rows_t = (t0 + o_t) * H + i_h  # [BT] every row of the chunk (as keys)
    b_off = tl.zeros([BC, BT], dtype=tl.float32)  # scores against the keys before the block
    b_dia = tl.zeros([BC, BC], dtype=tl.float32)  # scores inside the block (j < i) and the bonus (j = i)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_ik = m_i[:, None] & m_k[None, :]
        b_r = tl.load(r + rows_i[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
        b_ki = tl.load(k + rows_i[:, None] * K + o_k[None, :], mask=m_ik, other=0).to(tl.float32)
        b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_dia += tl.where(o_c[:, None] == o_c[None, :], tl.sum(b_r * b_u[None, :] * b_ki, 1)[:, None], 0)
        if i_i > 0:
            # query i: exp(w_s0 + .. + w_{i-1}); key j < s0: exp(w_{j+1} + .. + w_{s0-1})
            b_rd = (b_r * tl.exp(_prefix(w, rows_i, s0 + o_c, s0, n, o_k, m_k, H, K))).to(DT)
            m_j = (o_t < s0)[:, None] & m_k[None, :]
            b_kj = tl.load(k + rows_t[:, None] * K + o_k[None, :], mask=m_j, other=0).to(tl.float32)
            b_kd = b_kj * tl.exp(_suffix(w, rows_t, o_t, 0, s0, o_k, m_k, H, K))
            b_off += tl.dot(b_rd, tl.trans(b_kd).to(DT), input_precision=PREC)
        # diagonal block, key rows j = BC-1 .. 0; b_acc[i] = w_{j+1} + .. + w_{i-1} for the rows i > j
        b_acc = tl.zeros([BC, BK], dtype=tl.float32)
        for jj in range(0, BC):
            j = BC - 1 - jj
            m_j = o_k < tl.where(s0 + j < n, K, 0)  # key row j exists
            row_j = (t0 + s0 + j) * H + i_h
            b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
            b_wj = tl.load(w + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
            below = o_c[:, None] > j
            b_a = tl.sum(tl.where(below, b_r * b_kj[None, :] * tl.exp(b_acc), 0), 1)  # [BC]
            b_dia += tl.where(o_c[None, :] == j, b_a[:, None], 0)
            b_acc = tl.where(below, b_acc + b_wj[None, :], b_acc)
    tl.store(A + rows_i[:, None] * BT + o_t[None, :], b_off * scale, mask=m_i[:, None] & (o_t[None, :] < s0))
    tl.store(A + rows_i[:, None] * BT + s0 + o_c[None, :], b_dia * scale, mask=m_i[:, None])


@triton.jit
def _fwd_o(
    r,
    v,
    X,
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
        m_tk = m_t[:, None] & m_k[None, :]
        b_r = tl.load(r + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
        b_X = tl.load(X + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_h = tl.load(
            hs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_o += tl.dot((b_r * tl.exp(b_X)).to(DT), b_h.to(DT), input_precision=PREC)
    b_A = tl.load(A + rows[:, None] * BT + o_t[None, :], mask=m_t[:, None] & (o_t[:, None] >= o_t[None, :]), other=0)
    m_o = m_t[:, None] & m_v[None, :]
    b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_o, other=0)
    b_o = b_o * scale + tl.dot(b_A.to(DT), b_v.to(DT), input_precision=PREC)
    tl.store(o + rows[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_o)


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_state(
    r,
    w,
    X,
    Z,
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
        rows = (t0 + o_t) * H + i_h
        m_kt = m_k[:, None] & m_t[None, :]
        off_T = rows[None, :] * K + o_k[:, None]  # [BK, BT]: receptances transposed
        b_rT = tl.load(r + off_T, mask=m_kt, other=0).to(tl.float32)
        b_XT = tl.load(X + off_T, mask=m_kt, other=0)
        b_W = _chunk_total(w, Z, t0 * H + i_h, o_k, m_k, K)
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_rdT = (b_rT * tl.exp(b_XT)).to(DT)
        b_dh = b_dh * tl.exp(b_W)[:, None] + scale * tl.dot(b_rdT, b_do.to(DT), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + off_kv, b_dh, mask=m_kv)


@triton.jit
def _bwd_dv(
    k,
    Z,
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
    # A^T[j, i] = A[i, j] for i >= j (i valid)
    b_AT = tl.load(A + rows[None, :] * BT + o_t[:, None], mask=m_t[None, :] & (o_t[None, :] >= o_t[:, None]), other=0)
    b_dv = tl.dot(b_AT.to(DT), b_do.to(DT), input_precision=PREC)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(tl.float32)
        b_Z = tl.load(Z + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_dh = tl.load(
            dhs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_dv += tl.dot((b_k * tl.exp(b_Z)).to(DT), b_dh.to(DT), input_precision=PREC)
    tl.store(dv + rows[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def _bwd_intra(
    r,
    k,
    w,
    dA,
    dr,
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
    s0 = i_i * BC  # first row of this sub-block
    if s0 >= n:
        return
    e = s0 + BC - 1  # last row of this sub-block
    o_c = tl.arange(0, BC)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_i, m_k = s0 + o_c < n, o_k < K
    m_ik = m_i[:, None] & m_k[None, :]
    rows_i = (t0 + s0 + o_c) * H + i_h
    rows_t = (t0 + o_t) * H + i_h

    # dr of the block as queries: earlier keys through the first row s0, then the diagonal block
    b_dr = tl.zeros([BC, BK], dtype=tl.float32)
    if i_i > 0:
        m_j = (o_t < s0)[:, None] & m_k[None, :]
        b_kj = tl.load(k + rows_t[:, None] * K + o_k[None, :], mask=m_j, other=0).to(tl.float32)
        b_kd = (b_kj * tl.exp(_suffix(w, rows_t, o_t, 0, s0, o_k, m_k, H, K))).to(DT)
        b_dA = tl.load(dA + rows_i[:, None] * BT + o_t[None, :], mask=m_i[:, None] & (o_t[None, :] < s0), other=0)
        b_dr = tl.dot(b_dA.to(DT), b_kd, input_precision=PREC)
        b_dr *= tl.exp(_prefix(w, rows_i, s0 + o_c, s0, n, o_k, m_k, H, K))
    b_acc = tl.zeros([BC, BK], dtype=tl.float32)  # key rows j descending: w_{j+1} + .. + w_{i-1} for i > j
    for jj in range(0, BC):
        j = BC - 1 - jj
        m_j = o_k < tl.where(s0 + j < n, K, 0)  # key row j exists
        row_j = (t0 + s0 + j) * H + i_h
        b_kj = tl.load(k + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_wj = tl.load(w + row_j * K + o_k, mask=m_j, other=0).to(tl.float32)
        b_dAj = tl.load(dA + rows_i * BT + s0 + j, mask=m_i & (o_c > j), other=0)  # column j of the block
        below = o_c[:, None] > j
        b_dr += tl.where(below, b_dAj[:, None] * b_kj[None, :] * tl.exp(b_acc), 0)
        b_acc = tl.where(below, b_acc + b_wj[None, :], b_acc)

    # dk of the block as keys: later queries through the last row e, then the diagonal block
    b_dk = tl.zeros([BC, BK], dtype=tl.float32)
    if e + 1 < n:  # then the whole block is valid
        m_q = ((o_t > e) & (o_t < n))[:, None] & m_k[None, :]
        b_rq = tl.load(r + rows_t[:, None] * K + o_k[None, :], mask=m_q, other=0).to(tl.float32)
        b_rd = (b_rq * tl.exp(_prefix(w, rows_t, o_t, e + 1, n, o_k, m_k, H, K))).to(DT)
        m_dAT = ((o_t > e) & (o_t < n))[None, :]
        b_dAT = tl.load(dA + rows_t[None, :] * BT + s0 + o_c[:, None], mask=m_dAT, other=0)  # [key j, query i]
        b_dk = tl.dot(b_dAT.to(DT), b_rd, input_precision=PREC)
        b_dk *= tl.exp(_suffix(w, rows_i, s0 + o_c, 0, e + 1, o_k, m_k, H, K))
    b_acc = tl.zeros([BC, BK], dtype=tl.float32)  # query rows i ascending: w_{j+1} + .. + w_{i-1} for j < i
    for i in range(0, BC):
        m_q = o_k < tl.where(s0 + i < n, K, 0)  # query row i exists
        row_q = (t0 + s0 + i) * H + i_h
        b_ri = tl.load(r + row_q * K + o_k, mask=m_q, other=0).to(tl.float32)
        b_wi = tl.load(w + row_q * K + o_k, mask=m_q, other=0).to(tl.float32)
        b_dAi = tl.load(dA + row_q * BT + s0 + o_c, mask=o_c < tl.where(s0 + i < n, i, 0), other=0)  # row i, j < i
        above = o_c[:, None] < i
        b_dk += tl.where(above, b_dAi[:, None] * b_ri[None, :] * tl.exp(b_acc), 0)
        b_acc = tl.where(above, b_acc + b_wi[None, :], b_acc)

    tl.store(dr + rows_i[:, None] * K + o_k[None, :], b_dr, mask=m_ik)
    tl.store(dk + rows_i[:, None] * K + o_k[None, :], b_dk, mask=m_ik)


@triton.jit
def _bwd_inter(
    r,
    k,
    v,
    w,
    X,
    Z,
    u,
    hs,
    do,
    dhs,
    dA,
    dr,
    dk,
    dw,
    du,
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
    m_tk = m_t[:, None] & m_k[None, :]
    rows = (t0 + o_t) * H + i_h
    base = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dos = tl.zeros([BT, BK], dtype=tl.float32)  # do hs^T
    b_vds = tl.zeros([BT, BK], dtype=tl.float32)  # v dhs^T
    b_sds = tl.zeros([BK], dtype=tl.float32)  # sum_v dhs * hs
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        m_vk = m_v[:, None] & m_k[None, :]
        b_hT = tl.load(hs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dhT = tl.load(dhs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dos += tl.dot(b_do.to(DT), b_hT.to(DT), input_precision=PREC)
        b_vds += tl.dot(b_v.to(DT), b_dhT.to(DT), input_precision=PREC)
        b_sds += tl.sum(b_hT * b_dhT, 0)
    off = rows[:, None] * K + o_k[None, :]
    b_r = tl.load(r + off, mask=m_tk, other=0).to(tl.float32)
    b_k = tl.load(k + off, mask=m_tk, other=0).to(tl.float32)
    b_W = _chunk_total(w, Z, t0 * H + i_h, o_k, m_k, K)
    b_X = tl.load(X + off, mask=m_tk, other=0)
    b_Z = tl.load(Z + off, mask=m_tk, other=0)
    b_dks = tl.exp(b_Z) * b_vds  # dk through the state after the chunk
    b_dr = tl.load(dr + off, mask=m_tk, other=0) + scale * tl.exp(b_X) * b_dos
    b_dk = tl.load(dk + off, mask=m_tk, other=0) + b_dks
    # dw_s = sum_{t > s} r dr - sum_{t >= s} k dk + sum_v dS' * S_next   (dr, dk without the bonus here)
    b_a = b_r * b_dr
    b_last = tl.exp(b_W) * b_sds + tl.sum(b_k * b_dks, 0)
    b_dw = tl.cumsum(b_a - b_k * b_dk, axis=0, reverse=True) - b_a + b_last[None, :]
    tl.store(dw + off, b_dw.to(dw.dtype.element_ty), mask=m_tk)
    # the bonus: o_i += scale (r_i . u . k_i) v_i, whose score gradient is dA_ii
    b_dAd = tl.load(dA + rows * BT + o_t, mask=m_t, other=0)
    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
    b_rk = b_dAd[:, None] * b_r * b_k
    tl.store(du + (i_c.to(tl.int64) * H + i_h) * K + o_k, tl.sum(b_rk, 0), mask=m_k)
    tl.store(dr + off, b_dr + b_dAd[:, None] * b_u[None, :] * b_k, mask=m_tk)
    tl.store(dk + off, b_dk + b_dAd[:, None] * b_u[None, :] * b_r, mask=m_tk)


# ----------------------------------------------------------------------------------------------- launchers


def _chunk_decays(w, ch: Chunks) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``X`` (decay from the chunk start to each token, exclusive) and ``Z`` (from each token, exclusive,
    to the chunk end), both ``[B, T, H, K]``."""
    H, K = w.shape[-2:]
    X = torch.empty(w.shape, dtype=torch.float32, device=w.device)
    Z = torch.empty_like(X)
    BK = block_size(K, MAX_TILE)
    _decays[(ch.NT, triton.cdiv(K, BK), H)](w, X, Z, ch.cu, ch.chunk_indices, H=H, K=K, BT=ch.BT, BK=BK)
    return X, Z


def _states(k, v, w, Z, h0, ch: Chunks, output_final_state: bool, prec: str, dt):
    _, _, H, K = k.shape
    V = v.shape[-1]
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    hs = torch.empty(ch.NT, H, K, V, dtype=torch.float32, device=k.device)
    ht = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    grid = (ch.N * H, triton.cdiv(K, BK), triton.cdiv(V, BV))
    _fwd_state[grid](
        k,
        v,
        w,
        Z,
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


def _scores(r, k, w, u, scale: float, ch: Chunks, prec: str, dt) -> torch.Tensor:
    B, T, H, K = r.shape
    A = torch.empty(B, T, H, ch.BT, dtype=torch.float32, device=r.device)
    BK = block_size(K, MAX_TILE)
    _fwd_A[(ch.NT, ch.BT // BC, H)](
        r,
        k,
        w,
        u,
        A,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        BT=ch.BT,
        BC=BC,
        BK=BK,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(BC, ch.BT, BK),
    )
    return A


def chunk_rwkv6_fwd(r, k, v, w, u, scale: float, h0, output_final_state: bool, ch: Chunks):
    """Forward on contiguous inputs: returns ``o [B, T, H, V]`` (dtype of v) and the final state or None."""
    _, _, H, K = r.shape
    V = v.shape[-1]
    prec, dt = dot_precision(r.dtype), dot_dtype(r.dtype)
    X, Z = _chunk_decays(w, ch)
    hs, ht = _states(k, v, w, Z, h0, ch, output_final_state, prec, dt)
    A = _scores(r, k, w, u, scale, ch, prec, dt)
    o = torch.empty_like(v)
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    _fwd_o[(ch.NT, triton.cdiv(V, BV), H)](
        r,
        v,
        X,
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
        BK=BK,
        BV=BV,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(ch.BT, BK, BV),
    )
    return o, ht


def chunk_rwkv6_bwd(r, k, v, w, u, scale: float, h0, do, dht, ch: Chunks):
    """Backward on contiguous inputs: returns fp32 ``dr, dk``, ``dv`` (dtype of v), ``dw`` (dtype of w),
    fp32 ``du [H, K]`` and fp32 ``dh0`` (None without an initial state)."""
    _, _, H, K = r.shape
    V = v.shape[-1]
    BT, NC = ch.BT, ch.BT // BC
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    prec, dt, nw = dot_precision(r.dtype), dot_dtype(r.dtype), num_warps(BT, BK, BV)
    X, Z = _chunk_decays(w, ch)
    hs, _ = _states(k, v, w, Z, h0, ch, False, prec, dt)
    A = _scores(r, k, w, u, scale, ch, prec, dt)

    dhs = torch.empty_like(hs)
    dh0 = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=r.device) if h0 is not None else None
    _bwd_state[(ch.N * H, NK, NV)](
        r,
        w,
        X,
        Z,
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
        Z,
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
    dr = torch.empty(r.shape, dtype=torch.float32, device=r.device)
    dk = torch.empty_like(dr)
    _bwd_intra[(ch.NT * NC, NK, H)](
        r,
        k,
        w,
        dA,
        dr,
        dk,
        ch.cu,
        ch.chunk_indices,
        H=H,
        K=K,
        BT=BT,
        BC=BC,
        BK=BK,
        NC=NC,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(BC, BT, BK),
    )
    dw = torch.empty_like(w)
    du = torch.empty(ch.NT, H, K, dtype=torch.float32, device=r.device)
    _bwd_inter[(ch.NT, NK, H)](
        r,
        k,
        v,
        w,
        X,
        Z,
        u,
        hs,
        do,
        dhs,
        dA,
        dr,
        dk,
        dw,
        du,
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
    return dr, dk, dv, dw, du.sum(0), dh0


class ChunkRWKV6Function(torch.autograd.Function):
    """Autograd wrapper: ``apply(r, k, v, w, u, scale, initial_state, output_final_state, chunk_size, cu_seqlens)``."""

    @staticmethod
    def forward(ctx, r, k, v, w, u, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        B, T = r.shape[:2]
        ch = prepare_chunks(cu_seqlens, B, T, chunk_size, r.device)
        o, ht = chunk_rwkv6_fwd(r, k, v, w, u, scale, initial_state, output_final_state, ch)
        ctx.save_for_backward(r, k, v, w, u, initial_state)
        ctx.scale, ctx.chunks = scale, ch
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        r, k, v, w, u, h0 = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dr, dk, dv, dw, du, dh0 = chunk_rwkv6_bwd(r, k, v, w, u, ctx.scale, h0, do, dht, ctx.chunks)
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dr.to(r.dtype), dk.to(k.dtype), dv, dw, du.to(u.dtype), None, dh0, None, None, None
