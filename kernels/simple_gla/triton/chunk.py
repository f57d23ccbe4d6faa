"""Chunkwise simple GLA in Triton: forward and backward kernels behind one ``torch.autograd.Function``.

The gate is one scalar per head and step, so inside a chunk of ``BT`` tokens (cut per sequence, see
``kernels/triton_utils.py``) the cumulative log decay ``G_i`` is a vector and the intra-chunk decay is
the ``[BT, BT]`` matrix ``D_ij = exp(G_i - G_j)`` for ``j <= i`` (0 above). It is built in log space:
the exponent is replaced by ``-inf`` outside the causal (and valid) triangle before ``exp``, so every
``exp`` argument is <= 0 and strong decay stays finite, with no sub-block split. With ``S`` the state
entering the chunk and ``L`` its last token::

    o_i    = scale * [exp(G_i) q_i S + sum_{j <= i} D_ij (q_i . k_j) v_j]
    S_next = exp(G_L) S + (k * exp(G_L - G))^T v

``GATE`` (constexpr) selects the gate: 0 none (linear attention: ``G = 0``), 1 data-dependent
``g [B, T, H]`` (chunk-local cumsum in fp32 by ``chunk_cumsum``), 2 constant ``g_gamma [H]``
(``G_i = gamma * (i + 1)``, computed in the kernels).

Kernels (grid in brackets; NT chunks in all, N sequences, NK / NV tiles of K / V):

forward
    ``chunk_cumsum`` [NT, H]         G for GATE = 1 (``kernels/triton_utils.py``)
    ``_fwd_state``   [N*H, NK, NV]   loop over chunks: the state entering each chunk (fp32 ``hs``), final state
    ``_fwd_o``       [NT, NV, H]     o = scale (exp(G) q hs + ((q k^T) * D) v)
backward (G and hs are recomputed)
    ``_bwd_state``   [N*H, NK, NV]   reverse loop: dhs[c] = dL/d(state after chunk c); the last one is dh0
    ``_bwd_dqk``     [NT, NK, H]     dP = scale (do v^T) * D;  dq = dP k + scale exp(G) (do hs^T);
                                     dk = dP^T q + exp(G_L - G) (v dhs^T); per-token partial sums of
                                     q.dq - k.dk for dg (intra-chunk part as rowsum - colsum of dP * q k^T)
    ``_bwd_dv``      [NT, NV, H]     dv = (scale (q k^T) * D)^T do + (k exp(G_L - G)) dhs
    ``_bwd_dg``      [N*H]           dg_t = sum_{s >= t} (q_s.dq_s - k_s.dk_s) + sum(dS_T * S_T)

The dg identity is the one derived in ``kernels/gla/triton/chunk.py``, summed over the key channels;
``d g_gamma`` is the sum of dg over all tokens. Operands of ``tl.dot`` are cast to ``DT`` (the input
dtype; see ``dot_dtype``), accumulation is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import (
    Chunks,
    block_size,
    causal_decay,
    chunk_cumsum,
    chunk_span,
    dot_dtype,
    dot_precision,
    num_warps,
    prepare_chunks,
)

__all__ = ["chunk_simple_gla_fwd", "chunk_simple_gla_bwd", "ChunkSimpleGLAFunction"]

MAX_TILE = 64
"""Largest K / V tile."""


@triton.jit
def _gate(G, g_gamma, t0, n, i_h, H: tl.constexpr, BT: tl.constexpr, GATE: tl.constexpr):
    """Cumulative log decay of a chunk: ``G [BT]`` (0 on rows past its end) and ``G_L`` at its last token."""
    o_t = tl.arange(0, BT)
    if GATE == 1:
        b_G = tl.load(G + (t0 + o_t) * H + i_h, mask=o_t < n, other=0)
    elif GATE == 2:
        b_G = tl.where(o_t < n, tl.load(g_gamma + i_h).to(tl.float32) * (o_t + 1).to(tl.float32), 0)
    else:
        b_G = tl.zeros([BT], dtype=tl.float32)
    b_GL = tl.sum(tl.where(o_t == n - 1, b_G, 0), axis=0)
    return b_G, b_GL


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _fwd_state(
    k,
    v,
    G,
    g_gamma,
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
    GATE: tl.constexpr,
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
        b_kT = tl.load(
            k + ((t0 + o_t[None, :]) * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0
        )
        b_v = tl.load(v + ((t0 + o_t[:, None]) * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0)
        b_G, b_GL = _gate(G, g_gamma, t0, n, i_h, H, BT, GATE)
        b_kT = (b_kT * tl.exp(tl.where(m_t, b_GL - b_G, 0))[None, :]).to(DT)  # keys decayed to the chunk end
        b_h = b_h * tl.exp(b_GL) + tl.dot(b_kT, b_v.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


@triton.jit
def _fwd_o(
    q,
    k,
    v,
    G,
    g_gamma,
    hs,
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
    GATE: tl.constexpr,
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
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(q + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0).to(DT)
        b_kT = tl.load(k + rows[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0).to(DT)
        b_h = tl.load(
            hs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_A += tl.dot(b_q, b_kT, input_precision=PREC)
        b_o += tl.dot(b_q, b_h.to(DT), input_precision=PREC)
    b_G, _ = _gate(G, g_gamma, t0, n, i_h, H, BT, GATE)
    b_A *= causal_decay(b_G, n, BT, False, False)
    m_o = m_t[:, None] & m_v[None, :]
    b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_o, other=0)
    b_o = b_o * tl.exp(b_G)[:, None] + tl.dot(b_A.to(DT), b_v.to(DT), input_precision=PREC)
    tl.store(o + rows[:, None] * V + o_v[None, :], (b_o * scale).to(o.dtype.element_ty), mask=m_o)


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_state(
    q,
    G,
    g_gamma,
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
    GATE: tl.constexpr,
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
        b_qT = tl.load(
            q + ((t0 + o_t[None, :]) * H + i_h) * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0
        )
        b_do = tl.load(
            do + ((t0 + o_t[:, None]) * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0
        )
        b_G, b_GL = _gate(G, g_gamma, t0, n, i_h, H, BT, GATE)
        b_qT = (b_qT * tl.exp(b_G)[None, :]).to(DT)
        b_dh = b_dh * tl.exp(b_GL) + scale * tl.dot(b_qT, b_do.to(DT), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + off_kv, b_dh, mask=m_kv)


@triton.jit
def _bwd_dqk(
    q,
    k,
    v,
    G,
    g_gamma,
    hs,
    do,
    dhs,
    dq,
    dk,
    dgx,
    cu,
    chunk_indices,
    scale,
    dgx_stride,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    HAS_DG: tl.constexpr,
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
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
        b_v = tl.load(v + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
        m_vk = m_v[:, None] & m_k[None, :]
        b_hT = tl.load(hs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0).to(DT)  # [BV, BK]
        b_dhT = tl.load(dhs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0).to(DT)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dq += tl.dot(b_do, b_hT, input_precision=PREC)
        b_dk += tl.dot(b_v, b_dhT, input_precision=PREC)
    b_G, b_GL = _gate(G, g_gamma, t0, n, i_h, H, BT, GATE)
    b_dP = b_dA * scale * causal_decay(b_G, n, BT, False, False)  # dL/d(q_i . k_j), fp32
    m_tk = m_t[:, None] & m_k[None, :]
    b_q = tl.load(q + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(DT)
    b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0).to(DT)
    b_dq = b_dq * (scale * tl.exp(b_G))[:, None]  # inter-chunk parts first
    b_dk = b_dk * tl.exp(tl.where(m_t, b_GL - b_G, 0))[:, None]
    if HAS_DG:
        # this K tile's share of q.dq - k.dk per token. The intra-chunk part is rowsum(M) - colsum(M) with
        # M = dP * (q k^T): the same numbers, but the diagonal terms (equal and opposite) cancel exactly
        # instead of leaving an fp32 round-off as large as q.dq itself (it matters under strong decay).
        b_M = b_dP * tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_x = tl.sum(b_M, axis=1) - tl.sum(b_M, axis=0)
        b_x += tl.sum(b_q.to(tl.float32) * b_dq - b_k.to(tl.float32) * b_dk, axis=1)
        tl.store(dgx + i_k.to(tl.int64) * dgx_stride + rows, b_x, mask=m_t)
    b_dq += tl.dot(b_dP.to(DT), b_k, input_precision=PREC)
    b_dk += tl.dot(tl.trans(b_dP).to(DT), b_q, input_precision=PREC)
    off = rows[:, None] * K + o_k[None, :]
    tl.store(dq + off, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + off, b_dk.to(dk.dtype.element_ty), mask=m_tk)


@triton.jit
def _bwd_dv(
    q,
    k,
    G,
    g_gamma,
    do,
    dhs,
    dv,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATE: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < n, o_v < V
    rows = (t0 + o_t) * H + i_h
    b_G, b_GL = _gate(G, g_gamma, t0, n, i_h, H, BT, GATE)
    b_kdecay = tl.exp(tl.where(m_t, b_GL - b_G, 0))
    b_AT = tl.zeros([BT, BT], dtype=tl.float32)  # [j, i] = q_i . k_j
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_qT = tl.load(q + rows[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0).to(DT)
        b_dh = tl.load(
            dhs + (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :],
            mask=m_k[:, None] & m_v[None, :],
            other=0,
        )
        b_AT += tl.dot(b_k.to(DT), b_qT, input_precision=PREC)
        b_dv += tl.dot((b_k * b_kdecay[:, None]).to(DT), b_dh.to(DT), input_precision=PREC)
    b_AT = (b_AT * scale * causal_decay(b_G, n, BT, False, True)).to(DT)
    m_tv = m_t[:, None] & m_v[None, :]
    b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
    b_dv += tl.dot(b_AT, b_do, input_precision=PREC)
    tl.store(dv + rows[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_tv)


@triton.jit
def _bwd_dg(
    dgx, dg, dg_last, cu, dgx_stride, H: tl.constexpr, BT: tl.constexpr, NK: tl.constexpr, HAS_LAST: tl.constexpr
):
    i_nh = tl.program_id(0).to(tl.int64)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    NT = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    b_carry = tl.zeros([1], dtype=tl.float32)
    if HAS_LAST:  # sum(dS_T * S_T) enters every step's gate
        b_carry += tl.load(dg_last + i_nh + tl.arange(0, 1))
    for i_r in range(0, NT):
        t0 = bos + (NT - 1 - i_r) * BT
        m_t = o_t < eos - t0
        rows = (t0 + o_t) * H + i_h
        b_x = tl.zeros([BT], dtype=tl.float32)
        p_x = dgx + rows
        for _ in range(0, NK):  # sum the K tiles' shares
            b_x += tl.load(p_x, mask=m_t, other=0)
            p_x += dgx_stride
        tl.store(dg + rows, (tl.cumsum(b_x, axis=0, reverse=True) + b_carry).to(dg.dtype.element_ty), mask=m_t)
        b_carry += tl.sum(b_x, axis=0)


# ----------------------------------------------------------------------------------------------- launchers


def _gate_mode(g, g_gamma) -> int:
    return 1 if g is not None else 2 if g_gamma is not None else 0


def _states(k, v, G, g_gamma, gate, h0, ch: Chunks, output_final_state: bool, prec, dt):
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
        g_gamma,
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
        GATE=gate,
        HAS_H0=h0 is not None,
        STORE_HT=output_final_state,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(ch.BT, BK, BV),
    )
    return hs, ht


def chunk_simple_gla_fwd(q, k, v, g, g_gamma, scale: float, h0, output_final_state: bool, ch: Chunks):
    """Forward on contiguous inputs: returns ``o [B, T, H, V]`` (dtype of v) and the final state or None."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    prec, dt, gate = dot_precision(q.dtype), dot_dtype(q.dtype), _gate_mode(g, g_gamma)
    G = chunk_cumsum(g, ch)
    hs, ht = _states(k, v, G, g_gamma, gate, h0, ch, output_final_state, prec, dt)
    o = torch.empty_like(v)
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    _fwd_o[(ch.NT, triton.cdiv(V, BV), H)](
        q,
        k,
        v,
        G,
        g_gamma,
        hs,
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
        GATE=gate,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(ch.BT, BK, BV),
    )
    return o, ht


def chunk_simple_gla_bwd(q, k, v, g, g_gamma, scale: float, h0, ht, do, dht, ch: Chunks, need_dg: bool = True):
    """Backward on contiguous inputs: returns ``dq, dk, dv`` (input dtypes), ``dg`` (dtype of g, or None),
    ``dg_gamma`` (dtype of g_gamma, or None) and ``dh0`` (fp32, or None)."""
    _, _, H, K = q.shape
    V = v.shape[-1]
    BT = ch.BT
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    prec, dt, gate = dot_precision(q.dtype), dot_dtype(q.dtype), _gate_mode(g, g_gamma)
    nw = num_warps(BT, BK, BV)
    G = chunk_cumsum(g, ch)
    hs, _ = _states(k, v, G, g_gamma, gate, h0, ch, False, prec, dt)

    dhs = torch.empty_like(hs)
    dh0 = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
    _bwd_state[(ch.N * H, NK, NV)](
        q,
        G,
        g_gamma,
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
        GATE=gate,
        HAS_DHT=dht is not None,
        STORE_DH0=h0 is not None,
        PREC=prec,
        DT=dt,
        num_warps=nw,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    stride = q.shape[0] * q.shape[1] * H  # tokens * heads: one K tile's slice of dgx
    has_dg = gate != 0 and need_dg
    dgx = torch.empty(NK, stride, dtype=torch.float32, device=q.device) if has_dg else None
    _bwd_dqk[(ch.NT, NK, H)](
        q,
        k,
        v,
        G,
        g_gamma,
        hs,
        do,
        dhs,
        dq,
        dk,
        dgx,
        ch.cu,
        ch.chunk_indices,
        scale,
        stride,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        GATE=gate,
        HAS_DG=has_dg,
        PREC=prec,
        DT=dt,
        num_warps=nw,
    )
    _bwd_dv[(ch.NT, NV, H)](
        q,
        k,
        G,
        g_gamma,
        do,
        dhs,
        dv,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        GATE=gate,
        PREC=prec,
        DT=dt,
        num_warps=nw,
    )
    dg = dg_gamma = None
    if has_dg:
        dg_last = (dht.float() * ht).sum((-2, -1)).contiguous() if dht is not None else None  # (N, H)
        dg_tok = torch.empty(q.shape[:3], dtype=torch.float32 if g is None else g.dtype, device=q.device)
        _bwd_dg[(ch.N * H,)](dgx, dg_tok, dg_last, ch.cu, stride, H=H, BT=BT, NK=NK, HAS_LAST=dg_last is not None)
        if g is not None:
            dg = dg_tok
        else:  # the constant gate enters every step of every sequence
            dg_gamma = dg_tok.sum((0, 1)).to(g_gamma.dtype)
    return dq, dk, dv, dg, dg_gamma, dh0


class ChunkSimpleGLAFunction(torch.autograd.Function):
    """Autograd wrapper: ``apply(q, k, v, g, g_gamma, scale, initial_state, output_final_state, chunk_size,
    cu_seqlens)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, g_gamma, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        B, T = q.shape[:2]
        ch = prepare_chunks(cu_seqlens, B, T, chunk_size, q.device)
        o, ht = chunk_simple_gla_fwd(q, k, v, g, g_gamma, scale, initial_state, output_final_state, ch)
        ctx.save_for_backward(q, k, v, g, g_gamma, initial_state, ht)
        ctx.scale, ctx.chunks = scale, ch
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, g_gamma, h0, ht = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, dg, dg_gamma, dh0 = chunk_simple_gla_bwd(
            q,
            k,
            v,
            g,
            g_gamma,
            ctx.scale,
            h0,
            ht,
            do,
            dht,
            ctx.chunks,
            need_dg=ctx.needs_input_grad[3] or ctx.needs_input_grad[4],
        )
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq, dk, dv, dg, dg_gamma, None, dh0, None, None, None
