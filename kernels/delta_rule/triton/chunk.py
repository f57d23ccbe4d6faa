"""Chunkwise (gated) delta rule in Triton: forward and backward kernels behind one ``torch.autograd.Function``.

Per sequence and head, time is cut into chunks of ``BT`` tokens (chunks never cross a sequence boundary; see
``kernels/triton_utils.py``). Inside a chunk ``G_i = g_1 + ... + g_i`` (fp32; ``G = 0`` for the plain delta
rule, ``GATED=False``), ``Gamma_ij = exp(G_i - G_j)`` for ``j <= i`` and ``L`` is the last token. With the WY
representation ``W, U`` of ``wy.py`` and ``S`` the state entering the chunk::

    V'     = U - W S                                                  (pseudo-values: what each token writes)
    o      = scale [(q * exp(G)) S + ((q K^T) * Gamma) V']
    S_next = exp(G_L) S + (K * exp(G_L - G))^T V'

Every ``exp`` argument is <= 0 (``Gamma`` is built with ``-inf`` outside the causal triangle before ``exp``).

Kernels (grid in brackets; NT chunks, N sequences, NV / NK tiles of V / K; the state kernels hold all of K):

forward
    ``chunk_cumsum``   [NT, H]        G = chunk-local cumsum of g (gated only; ``kernels/triton_utils.py``)
    ``wy._fwd_solve``  [NT, H]        Ai = (I + M)^{-1} by 16 x 16 sub-blocks (kept for the backward)
    ``wy._fwd_wu``     [NT, H]        W, U (fp32)
    ``_fwd_state``     [N*H, NV]      loop over the sequence's chunks: hs[c] = S entering chunk c (fp32),
                                      V' = U - W S (fp32), S <- exp(G_L) S + (K exp(G_L - G))^T V'; final state
    ``_fwd_o``         [NT, NV, H]    o = scale [(q exp(G)) hs + ((q K^T) * Gamma) V']
backward (G, W, U, hs and V' are recomputed from the saved Ai)
    ``_bwd_dv_local``  [NT, NV, H]    dV'_local = P^T do, P = scale (q K^T) * Gamma
    ``_bwd_state``     [N*H, NV]      reverse loop, dS = dL/d(state after the chunk) (dht for the last):
                                      dhs[c] = dS; dV' = dV'_local + (K exp(G_L - G)) dS;
                                      dS <- exp(G_L) dS + scale (q exp(G))^T do - W^T dV'; the last one is dh0
    ``_bwd_dqk``       [NT, NK, H]    dP = do V'^T; dq = scale exp(G) (do hs^T) + (scale dP * Gamma) K;
                                      dk_part = exp(G_L - G) (V' dhs^T) + (scale dP * Gamma)^T q;
                                      dW = -dV' hs^T; this K tile's share of dG
    ``wy._bwd_wy``     [NT, H]        through W = Ai (beta e^G K), U = Ai (beta V), Ai = (I + M)^{-1}:
                                      dk, dv, dbeta, and dg = reverse cumsum of dG inside the chunk

The gate gradient. ``G`` is chunk-local (the state carries ``exp(G_L)`` explicitly), so ``dg`` is the reverse
cumsum, inside each chunk, of ``dG = dL/dG``, which collects (rows ``i``, this K tile's share in ``_bwd_dqk``):
``q_i . dq_inter_i`` (``q exp(G)``), ``sum_j E_ij - sum_j E_ji`` with ``E = dP * P`` strictly lower (``Gamma``
in the scores; the diagonal, ``Gamma_ii = 1``, drops out), ``-k_i . dk_state_i`` and, at the last row ``L``,
``sum_j k_j . dk_state_j + exp(G_L) <S, dS>`` (the state update); ``wy._bwd_wy`` adds the terms of ``M`` and
of ``W``'s ``exp(G)``.

Operands of ``tl.dot`` here are cast to ``DT`` (the input dtype: bf16 / fp16 tensor cores; fp32 inputs use exact
products unless torch allows TF32, see ``dot_dtype`` / ``dot_precision``); accumulation is always fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.delta_rule.triton.wy import _bwd_wy, _fwd_solve, _fwd_wu, _gate
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
    state_tiles,
)

__all__ = ["chunk_gated_delta_rule_fwd", "chunk_gated_delta_rule_bwd", "ChunkGatedDeltaRuleFunction"]

BC = 16
"""Sub-block size of the triangular solve: the smallest ``tl.dot`` tile."""

MAX_TILE = 64
"""Largest K / V tile of the per-chunk kernels (they loop over, or launch programs for, several tiles)."""

# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _fwd_state(
    k,
    w,
    u,
    G,
    h0,
    hs,
    vn,
    ht,
    cu,
    chunk_offsets,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATED: tl.constexpr,
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
        b_w = tl.load(w + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0)
        b_u = tl.load(u + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_vn = b_u - tl.dot(b_w.to(DT), b_h.to(DT), input_precision=PREC)  # V' = U - W S
        tl.store(vn + rows[:, None] * V + o_v[None, :], b_vn, mask=m_tv)
        b_kT = tl.load(k + rows[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0)
        if GATED:
            b_G, b_GL = _gate(G, t0, n, i_h, H, BT, GATED)
            b_vn *= tl.exp(tl.where(m_t, b_GL - b_G, 0))[:, None]  # decayed to the chunk end
            b_h *= tl.exp(b_GL)
        b_h += tl.dot(b_kT.to(DT), b_vn.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


@triton.jit
def _fwd_o(
    q,
    k,
    vn,
    G,
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
    GATED: tl.constexpr,
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
    b_G, _ = _gate(G, t0, n, i_h, H, BT, GATED)
    b_A *= causal_decay(b_G, n, BT, False, False)
    if GATED:
        b_o *= tl.exp(b_G)[:, None]
    m_o = m_t[:, None] & m_v[None, :]
    b_vn = tl.load(vn + rows[:, None] * V + o_v[None, :], mask=m_o, other=0)
    b_o += tl.dot(b_A.to(DT), b_vn.to(DT), input_precision=PREC)
    tl.store(o + rows[:, None] * V + o_v[None, :], (b_o * scale).to(o.dtype.element_ty), mask=m_o)


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_dv_local(
    q,
    k,
    G,
    do,
    dvl,
    cu,
    chunk_indices,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATED: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_v, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    _, t0, n = chunk_span(cu, chunk_indices, i_c, BT)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_t, m_v = o_t < n, o_v < V
    rows = (t0 + o_t) * H + i_h
    b_AT = tl.zeros([BT, BT], dtype=tl.float32)  # [j, i] = k_j . q_i
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0).to(DT)
        b_qT = tl.load(q + rows[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_t[None, :], other=0).to(DT)
        b_AT += tl.dot(b_k, b_qT, input_precision=PREC)
    b_G, _ = _gate(G, t0, n, i_h, H, BT, GATED)
    b_AT = (b_AT * scale * causal_decay(b_G, n, BT, False, True)).to(DT)
    m_tv = m_t[:, None] & m_v[None, :]
    b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
    tl.store(dvl + rows[:, None] * V + o_v[None, :], tl.dot(b_AT, b_do, input_precision=PREC), mask=m_tv)


@triton.jit
def _bwd_state(
    q,
    k,
    w,
    G,
    do,
    dvl,
    dht,
    dhs,
    dvn,
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
    GATED: tl.constexpr,
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
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_qT = tl.load(q + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_wT = tl.load(w + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_G, b_GL = _gate(G, t0, n, i_h, H, BT, GATED)
        if GATED:
            b_k = b_k * tl.exp(tl.where(m_t, b_GL - b_G, 0))[:, None]
            b_qT = b_qT * tl.exp(b_G)[None, :]
        # dV' = P^T do + (K exp(G_L - G)) dS
        b_dv = tl.load(dvl + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_dv += tl.dot(b_k.to(DT), b_dh.to(DT), input_precision=PREC)
        tl.store(dvn + rows[:, None] * V + o_v[None, :], b_dv, mask=m_tv)
        if GATED:
            b_dh *= tl.exp(b_GL)
        b_dh += scale * tl.dot(b_qT.to(DT), b_do.to(DT), input_precision=PREC)
        b_dh -= tl.dot(b_wT.to(DT), b_dv.to(DT), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + off_kv, b_dh, mask=m_kv)


@triton.jit
def _bwd_dqk(
    q,
    k,
    vn,
    G,
    hs,
    do,
    dhs,
    dvn,
    dq,
    dk_part,
    dw,
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
    GATED: tl.constexpr,
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
    b_dP = tl.zeros([BT, BT], dtype=tl.float32)  # do V'^T
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)  # do hs^T
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)  # V' dhs^T
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)  # dV' hs^T
    b_hdh = tl.zeros([BK], dtype=tl.float32)  # sum_v hs * dhs
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
        b_vn = tl.load(vn + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
        b_dvn = tl.load(dvn + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0).to(DT)
        m_vk = m_v[:, None] & m_k[None, :]
        b_hT = tl.load(hs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dhT = tl.load(dhs + base + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)
        b_dP += tl.dot(b_do, tl.trans(b_vn), input_precision=PREC)
        b_dq += tl.dot(b_do, b_hT.to(DT), input_precision=PREC)
        b_dks += tl.dot(b_vn, b_dhT.to(DT), input_precision=PREC)
        b_dw += tl.dot(b_dvn, b_hT.to(DT), input_precision=PREC)
        if HAS_DG:
            b_hdh += tl.sum(b_hT * b_dhT, 0)
    b_G, b_GL = _gate(G, t0, n, i_h, H, BT, GATED)
    b_dPs = b_dP * scale * causal_decay(b_G, n, BT, False, False)  # dL/d(q_i . k_j), j <= i
    m_tk = m_t[:, None] & m_k[None, :]
    off = rows[:, None] * K + o_k[None, :]
    b_q = tl.load(q + off, mask=m_tk, other=0)
    b_k = tl.load(k + off, mask=m_tk, other=0)
    b_dq *= scale
    if GATED:
        b_dq *= tl.exp(b_G)[:, None]
        b_dks *= tl.exp(tl.where(m_t, b_GL - b_G, 0))[:, None]
    if HAS_DG:
        b_x = tl.sum(b_q.to(tl.float32) * b_dq, 1)  # through q exp(G)
        b_ks = tl.sum(b_k.to(tl.float32) * b_dks, 1)  # through K exp(G_L - G) in the state update
        b_x -= b_ks
        b_last = tl.sum(b_ks, 0) + tl.exp(b_GL) * tl.sum(b_hdh, 0)  # through G_L
        b_x += tl.where(o_t == n - 1, b_last, 0)
        # through Gamma in the scores: E = dP * P, strictly lower (the diagonal has no gate)
        b_e = tl.dot(b_q.to(DT), tl.trans(b_k.to(DT)), input_precision=PREC)
        b_e = tl.where(o_t[:, None] > o_t[None, :], b_dPs * b_e, 0)
        b_x += tl.sum(b_e, 1) - tl.sum(b_e, 0)
        tl.store(dgx + i_k.to(tl.int64) * dgx_stride + rows, b_x, mask=m_t)
    b_dq += tl.dot(b_dPs.to(DT), b_k.to(DT), input_precision=PREC)
    b_dks += tl.dot(tl.trans(b_dPs).to(DT), b_q.to(DT), input_precision=PREC)
    tl.store(dq + off, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk_part + off, b_dks, mask=m_tk)
    tl.store(dw + off, -b_dw, mask=m_tk)


# ----------------------------------------------------------------------------------------------- launchers


def _state_config(K: int, dtype: torch.dtype, backward: bool) -> tuple[int, int, int, int]:
    """``(BK, BV, num_warps, num_stages)`` of a state kernel: all of K (a power of two >= 16) by a V tile.

    Chosen by compiling for sm_90 (bf16, K in 64 / 128 / 256; see README.md) for the fewest register spills:
    32-column V tiles up to K = 64, 16 beyond (``state_tiles``); two pipeline stages, but one for fp32 at
    K = 256, where two need more shared memory than an H100 has (227 KB).
    """
    BK, BV = state_tiles(K, MAX_TILE)
    warps = 8 if backward or BK <= 64 else 4
    stages = 2 if BK * torch.finfo(dtype).bits <= 128 * 32 else 1
    return BK, BV, warps, stages


def _wy(k, v, beta, G, Ai, ch: Chunks, solve: bool, prec: str):
    """``Ai`` (solved in place if ``solve``), then ``W [B, T, H, K]`` and ``U [B, T, H, V]`` in fp32."""
    _, _, H, K = k.shape
    V = v.shape[-1]
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    if solve:
        _fwd_solve[(ch.NT, H)](
            k,
            beta,
            G,
            Ai,
            ch.cu,
            ch.chunk_indices,
            H=H,
            K=K,
            BT=ch.BT,
            BC=BC,
            BK=BK,
            NC=ch.BT // BC,
            GATED=G is not None,
            PREC=prec,
        )
    w = torch.empty(k.shape, dtype=torch.float32, device=k.device)
    u = torch.empty(v.shape, dtype=torch.float32, device=v.device)
    _fwd_wu[(ch.NT, H)](
        k,
        v,
        beta,
        G,
        Ai,
        w,
        u,
        ch.cu,
        ch.chunk_indices,
        H=H,
        K=K,
        V=V,
        BT=ch.BT,
        BK=BK,
        BV=BV,
        GATED=G is not None,
        PREC=prec,
        num_warps=num_warps(ch.BT, ch.BT, max(BK, BV)),
    )
    return w, u


def _states(k, w, u, G, h0, ch: Chunks, output_final_state: bool, prec: str, dt):
    """``hs [NT, H, K, V]`` (the state entering each chunk), ``V' [B, T, H, V]`` (fp32) and the final state."""
    _, _, H, K = k.shape
    V = u.shape[-1]
    BK, BV, nw, ns = _state_config(K, k.dtype, backward=False)
    hs = torch.empty(ch.NT, H, K, V, dtype=torch.float32, device=k.device)
    vn = torch.empty_like(u)
    ht = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
    _fwd_state[(ch.N * H, triton.cdiv(V, BV))](
        k,
        w,
        u,
        G,
        h0,
        hs,
        vn,
        ht,
        ch.cu,
        ch.chunk_offsets,
        H=H,
        K=K,
        V=V,
        BT=ch.BT,
        BK=BK,
        BV=BV,
        GATED=G is not None,
        HAS_H0=h0 is not None,
        STORE_HT=output_final_state,
        PREC=prec,
        DT=dt,
        num_warps=nw,
        num_stages=ns,
    )
    return hs, vn, ht


def chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale: float, h0, output_final_state: bool, ch: Chunks):
    """Forward on contiguous inputs: ``o [B, T, H, V]`` (dtype of v), the final state ``[N, H, K, V]`` (fp32) or
    None, and ``Ai`` (fp32 ``[B, T, H, BT]``, for the backward). ``g=None`` is the plain delta rule."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    prec, dt = dot_precision(q.dtype), dot_dtype(q.dtype)
    G = chunk_cumsum(g, ch)
    Ai = torch.empty(B, T, H, ch.BT, dtype=torch.float32, device=q.device)
    w, u = _wy(k, v, beta, G, Ai, ch, True, prec)
    hs, vn, ht = _states(k, w, u, G, h0, ch, output_final_state, prec, dt)
    o = torch.empty_like(v)
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    _fwd_o[(ch.NT, triton.cdiv(V, BV), H)](
        q,
        k,
        vn,
        G,
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
        GATED=G is not None,
        PREC=prec,
        DT=dt,
        num_warps=num_warps(ch.BT, BK, BV),
    )
    return o, ht, Ai


def chunk_gated_delta_rule_bwd(q, k, v, g, beta, Ai, scale: float, h0, do, dht, ch: Chunks, need_dg: bool = True):
    """Backward on contiguous inputs: ``dq, dk, dv`` (input dtypes), ``dbeta`` (dtype of beta), ``dg`` (dtype of g,
    or None without a gate or when not needed) and ``dh0`` (fp32, or None without an initial state)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT = ch.BT
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    prec, dt, nw = dot_precision(q.dtype), dot_dtype(q.dtype), num_warps(BT, BK, BV)
    gated = g is not None
    G = chunk_cumsum(g, ch)
    w, u = _wy(k, v, beta, G, Ai, ch, False, prec)
    hs, vn, _ = _states(k, w, u, G, h0, ch, False, prec, dt)

    dvl = torch.empty_like(u)
    _bwd_dv_local[(ch.NT, NV, H)](
        q,
        k,
        G,
        do,
        dvl,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=BV,
        GATED=gated,
        PREC=prec,
        DT=dt,
        num_warps=nw,
    )
    dhs, dvn = torch.empty_like(hs), torch.empty_like(u)
    dh0 = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
    SK, SV, snw, sns = _state_config(K, q.dtype, backward=True)
    _bwd_state[(ch.N * H, triton.cdiv(V, SV))](
        q,
        k,
        w,
        G,
        do,
        dvl,
        dht,
        dhs,
        dvn,
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
        GATED=gated,
        HAS_DHT=dht is not None,
        STORE_DH0=h0 is not None,
        PREC=prec,
        DT=dt,
        num_warps=snw,
        num_stages=sns,
    )

    has_dg = gated and need_dg
    stride = B * T * H  # one K tile's slice of dgx
    dgx = torch.empty(NK, stride, dtype=torch.float32, device=q.device) if has_dg else None
    dq = torch.empty_like(q)
    dk_part, dw = torch.empty_like(w), torch.empty_like(w)
    # the two kernels with the most live [BT, BT] / [BT, BK] fp32 tiles run on narrower V (and K) tiles, 8 warps:
    # spill-free on sm_90 for bf16 at K = 64 and 128 (64-wide tiles spill; see README.md)
    SV = block_size(V, min(MAX_TILE, 32))
    _bwd_dqk[(ch.NT, NK, H)](
        q,
        k,
        vn,
        G,
        hs,
        do,
        dhs,
        dvn,
        dq,
        dk_part,
        dw,
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
        BV=SV,
        GATED=gated,
        HAS_DG=has_dg,
        PREC=prec,
        DT=dt,
        num_warps=8,
    )
    dk, dv, dbeta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
    dg = torch.empty_like(g) if has_dg else None
    _bwd_wy[(ch.NT, H)](
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
        ch.cu,
        ch.chunk_indices,
        stride,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=block_size(K, min(MAX_TILE, 32)),
        BV=SV,
        NKX=NK,
        GATED=gated,
        HAS_DG=has_dg,
        PREC=prec,
        num_warps=8,
    )
    return dq, dk, dv, dbeta, dg, dh0


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper: ``apply(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size,
    cu_seqlens)``; ``g=None`` is the plain delta rule."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        B, T = q.shape[:2]
        ch = prepare_chunks(cu_seqlens, B, T, chunk_size, q.device)
        o, ht, Ai = chunk_gated_delta_rule_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, ch)
        ctx.save_for_backward(q, k, v, g, beta, initial_state, Ai)
        ctx.scale, ctx.chunks = scale, ch
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0, Ai = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, dbeta, dg, dh0 = chunk_gated_delta_rule_bwd(
            q, k, v, g, beta, Ai, ctx.scale, h0, do, dht, ctx.chunks, need_dg=ctx.needs_input_grad[3]
        )
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq, dk, dv, dg, dbeta, None, dh0, None, None, None
