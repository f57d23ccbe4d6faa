"""Chunkwise Kimi Delta Attention in Triton: forward and backward kernels behind one ``torch.autograd.Function``.

Per sequence and head, time is cut into chunks of ``BT`` tokens (chunks never cross a sequence boundary; see
``kernels/triton_utils.py``). Inside a chunk ``G_i = g_1 + ... + g_i`` (fp32, one column per key channel,
non-increasing) and ``L`` is the last token. With ``Aqk`` / ``Akk`` of ``intra.py``, the WY representation
``W, U`` of ``wy.py`` and ``S`` the state entering the chunk::

    V'     = U - W S                                                 (pseudo-values: what each token writes)
    o      = scale (q * exp(G)) S + Aqk V'
    S_next = Diag(exp(G_L)) S + (K * exp(G_L - G))^T V'

Every ``exp`` argument is <= 0 (``G_L <= G_i <= 0``; the pair terms are built in ``intra.py``).

Kernels (grid in brackets; NT chunks, N sequences, NC = BT / 16, NV / NK tiles of V / K; the state kernels
hold all of K):

forward
    ``chunk_cumsum``      [NT, NK, H]     G = chunk-local cumsum of g, fp32  (``kernels/triton_utils.py``)
    ``intra._fwd_intra``  [NT, NC*NC, H]  Aqk (scale folded in) and Akk, one 16 x 16 sub-block pair
    ``wy._fwd_solve``     [NT, H]         Ai = (I + diag(beta) Akk)^{-1} (kept for the backward)
    ``wy._fwd_wu``        [NT, H]         W, U (fp32)
    ``_fwd_state``        [N*H, NV]       loop over the sequence's chunks: hs[c] = S entering chunk c (fp32),
                                          V' = U - W S (fp32), S <- exp(G_L) S + (K exp(G_L - G))^T V'; final
    ``_fwd_o``            [NT, NV, H]     o = scale (q exp(G)) hs + Aqk V'
backward (G, Aqk, Akk, W, U, hs and V' are recomputed from the saved Ai)
    ``bwd_dA``            [NT, H]         dA = scale tril(do V'^T)  (``kernels/triton_utils.py``)
    ``_bwd_dv_local``     [NT, NV, H]     dV'_local = Aqk^T do
    ``_bwd_state``        [N*H, NV]       reverse loop, dS = dL/d(state after the chunk) (dht for the last):
                                          dhs[c] = dS; dV' = dV'_local + (K exp(G_L - G)) dS;
                                          dS <- exp(G_L) dS + scale (q exp(G))^T do - W^T dV'; the last is dh0
    ``_bwd_inter``        [NT, NK, H]     dq = scale exp(G) (do hs^T); dk = exp(G_L - G) (V' dhs^T);
                                          dW = -dV' hs^T; their gate terms (fp32 partials)
    ``wy._bwd_wy``        [NT, H]         dv, dbeta; dk and dG get the terms of W; dAkk
    ``intra._bwd_intra``  [NT, NK, H]     dq, dk through Aqk and Akk; final dq, dk and dg

The gate gradient. ``G`` is chunk-local (the state carries ``exp(G_L)`` explicitly), so ``dg`` is the reverse
cumsum, inside each chunk, of ``dG = dL/dG [BT, K]``. Every use of ``G`` in a chunk multiplies a row ``x_i``
(``q_i`` or ``k_i``) by ``exp(G_i)`` (``q e^G``, ``e^G K`` in ``W``, the row side of ``Aqk`` / ``Akk``) or by
``exp(-G_i)`` (the column side of ``Aqk`` / ``Akk``, ``K exp(G_L - G)`` in the state update), besides
``exp(G_L)`` itself. So ``dG_i = q_i ⊙ dq_i + k_i ⊙ (dk^+_i - dk^-_i)``, where ``dk^+`` / ``dk^-`` are the parts
of ``dk`` through ``exp(+G)`` / ``exp(-G)`` factors, plus, at row ``L``, ``sum_j k_j ⊙ dk^state_j + exp(G_L) ⊙
sum_v (S ⊙ dS)`` (the ``G_L`` in the state update). Each kernel adds the terms of the factors it
differentiates (``_bwd_inter``: ``q e^G`` and the state update; ``wy._bwd_wy``: ``W``; ``intra._bwd_intra``:
the pair terms, then the reverse cumsum). Two pairs of terms cancel exactly and are never formed: the diagonal
of ``Aqk`` (no decay: ``+q_i dA_ii k_i`` and ``-k_i dA_ii q_i``) and the state update's ``-k_L ⊙ dk^state_L`` and
``+k_L ⊙ dk^state_L`` at row ``L``. Rounded apart they would leave fp32 noise of ``~1e-7 |q dq|`` in a ``dG`` that
strong decay makes tiny (``~1e-13`` at ``g = -30``), which then matches only in absolute terms.

Operands of ``tl.dot`` here are cast to ``DT`` (the input dtype: bf16 / fp16 tensor cores; fp32 inputs use exact
products unless torch allows TF32, see ``dot_dtype`` / ``dot_precision``); accumulation is always fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.kda.triton.intra import _bwd_intra, _fwd_intra
from kernels.kda.triton.wy import _bwd_wy, _fwd_solve, _fwd_wu
from kernels.triton_utils import (
    MAX_K,
    Chunks,
    block_size,
    bwd_dA,
    chunk_cumsum,
    chunk_span,
    dot_dtype,
    dot_precision,
    num_warps,
    prepare_chunks,
    state_tiles,
)

__all__ = ["chunk_kda_fwd", "chunk_kda_bwd", "ChunkKDAFunction"]

BC = 16
"""Sub-block size of the pair terms and of the triangular solve: the smallest ``tl.dot`` tile."""

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
        b_u = tl.load(u + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_vn = b_u - tl.dot(b_w.to(DT), b_h.to(DT), input_precision=PREC)  # V' = U - W S
        tl.store(vn + rows[:, None] * V + o_v[None, :], b_vn, mask=m_tv)
        b_kT = tl.load(k + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_GT = tl.load(G + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        b_kT = b_kT * tl.exp(tl.where(m_t[None, :], b_GL[:, None] - b_GT, 0))  # keys decayed to the chunk end
        b_h = b_h * tl.exp(b_GL)[:, None] + tl.dot(b_kT.to(DT), b_vn.to(DT), input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


@triton.jit
def _fwd_o(
    q,
    vn,
    G,
    hs,
    Aqk,
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
    b_A = tl.load(Aqk + rows[:, None] * BT + o_t[None, :], mask=m_t[:, None] & (o_t[:, None] >= o_t[None, :]), other=0)
    m_tv = m_t[:, None] & m_v[None, :]
    b_vn = tl.load(vn + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_o = b_o * scale + tl.dot(b_A.to(DT), b_vn.to(DT), input_precision=PREC)
    tl.store(o + rows[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m_tv)


# ----------------------------------------------------------------------------------------------- backward


@triton.jit
def _bwd_dv_local(
    Aqk,
    do,
    dvl,
    cu,
    chunk_indices,
    H: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
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
    m_AT = m_t[None, :] & (o_t[None, :] >= o_t[:, None])  # Aqk^T[j, i] = Aqk[i, j], i >= j
    b_AT = tl.load(Aqk + rows[None, :] * BT + o_t[:, None], mask=m_AT, other=0)
    m_tv = m_t[:, None] & m_v[None, :]
    b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
    b_dv = tl.dot(b_AT.to(DT), b_do.to(DT), input_precision=PREC)
    tl.store(dvl + rows[:, None] * V + o_v[None, :], b_dv, mask=m_tv)


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
        b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
        b_k = tl.load(k + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_G = tl.load(G + rows[:, None] * K + o_k[None, :], mask=m_tk, other=0)
        b_k = b_k * tl.exp(tl.where(m_t[:, None], b_GL[None, :] - b_G, 0))
        # dV' = Aqk^T do + (K exp(G_L - G)) dS
        b_dv = tl.load(dvl + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_dv += tl.dot(b_k.to(DT), b_dh.to(DT), input_precision=PREC)
        tl.store(dvn + rows[:, None] * V + o_v[None, :], b_dv, mask=m_tv)
        b_qT = tl.load(q + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_qT = b_qT * tl.exp(tl.load(G + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0))
        b_wT = tl.load(w + rows[None, :] * K + o_k[:, None], mask=m_kt, other=0)
        b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_tv, other=0)
        b_dh *= tl.exp(b_GL)[:, None]
        b_dh += scale * tl.dot(b_qT.to(DT), b_do.to(DT), input_precision=PREC)
        b_dh -= tl.dot(b_wT.to(DT), b_dv.to(DT), input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + off_kv, b_dh, mask=m_kv)


@triton.jit
def _bwd_inter(
    q,
    k,
    vn,
    G,
    hs,
    do,
    dhs,
    dvn,
    dq_part,
    dk_part,
    dw,
    dG,
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
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)  # V' dhs^T
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
        b_dq += tl.dot(b_do, b_hT.to(DT), input_precision=PREC)
        b_dk += tl.dot(b_vn, b_dhT.to(DT), input_precision=PREC)
        b_dw += tl.dot(b_dvn, b_hT.to(DT), input_precision=PREC)
        b_hdh += tl.sum(b_hT * b_dhT, 0)
    m_tk = m_t[:, None] & m_k[None, :]
    off = rows[:, None] * K + o_k[None, :]
    b_G = tl.load(G + off, mask=m_tk, other=0)
    b_GL = tl.load(G + ((t0 + n - 1) * H + i_h) * K + o_k, mask=m_k, other=0)
    b_dq *= scale * tl.exp(b_G)
    b_dk *= tl.exp(tl.where(m_t[:, None], b_GL[None, :] - b_G, 0))
    b_q = tl.load(q + off, mask=m_tk, other=0).to(tl.float32)
    b_k = tl.load(k + off, mask=m_tk, other=0).to(tl.float32)
    # gate terms: q e^G (+), K e^{-G} in the state update (-), and G_L itself at the last row, where the
    # row's own -k_L dk_L and +k_L dk_L cancel: both are left out rather than rounded apart
    last = o_t[:, None] == n - 1
    b_kdk = tl.where(last, 0, b_k * b_dk)
    b_x = b_q * b_dq + tl.where(last, tl.sum(b_kdk, 0)[None, :] + tl.exp(b_GL)[None, :] * b_hdh[None, :], -b_kdk)
    tl.store(dq_part + off, b_dq, mask=m_tk)
    tl.store(dk_part + off, b_dk, mask=m_tk)
    tl.store(dw + off, -b_dw, mask=m_tk)
    tl.store(dG + off, b_x, mask=m_tk)


# ----------------------------------------------------------------------------------------------- launchers


def _state_config(K: int, dtype: torch.dtype, backward: bool) -> tuple[int, int, int, int]:
    """``(BK, BV, num_warps, num_stages)`` of a state kernel: all of K (a power of two >= 16) by a V tile.

    Chosen by compiling for sm_90 (``compile_check.py``; see README.md): 32-column V tiles up to K = 64, 16
    beyond (``state_tiles``, as the delta rule's); 8 warps (4 spill at K = 128: these kernels also hold fp32
    ``[K, BT]`` gate tiles); two pipeline stages, but one at K = 256 for the backward and for fp32, where two
    need more shared memory than an H100 has (227 KB).
    """
    BK, BV = state_tiles(K, MAX_TILE)
    stages = 1 if BK == MAX_K and (backward or dtype == torch.float32) else 2
    return BK, BV, 8, stages


def _recompute(q, k, v, g, beta, scale: float, Ai, h0, ch: Chunks, output_final_state: bool, solve: bool):
    """Everything up to the output: ``G``, ``Aqk``, ``Akk``, ``Ai`` (solved in place if ``solve``), ``W``,
    ``hs`` (the state entering each chunk), ``V'`` (fp32) and the final state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT, NC = ch.BT, ch.BT // BC
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    prec, dt = dot_precision(q.dtype), dot_dtype(q.dtype)

    G = chunk_cumsum(g, ch, MAX_TILE)
    Aqk = torch.empty(B, T, H, BT, dtype=torch.float32, device=q.device)
    Akk = torch.empty_like(Aqk)
    _fwd_intra[(ch.NT, NC * NC, H)](
        q, k, G, Aqk, Akk, ch.cu, ch.chunk_indices, scale, H=H, K=K, BT=BT, BC=BC, BK=BK, NC=NC, PREC=prec, DT=dt
    )
    if solve:
        _fwd_solve[(ch.NT, H)](Akk, beta, Ai, ch.cu, ch.chunk_indices, H=H, BT=BT, BC=BC, NC=NC, PREC=prec)
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
        BT=BT,
        BK=BK,
        BV=BV,
        PREC=prec,
        num_warps=num_warps(BT, BT, max(BK, BV)),
    )
    SK, SV, nw, ns = _state_config(K, q.dtype, backward=False)
    hs = torch.empty(ch.NT, H, K, V, dtype=torch.float32, device=q.device)
    vn = torch.empty_like(u)
    ht = torch.empty(ch.N, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    _fwd_state[(ch.N * H, triton.cdiv(V, SV))](
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
        BT=BT,
        BK=SK,
        BV=SV,
        HAS_H0=h0 is not None,
        STORE_HT=output_final_state,
        PREC=prec,
        DT=dt,
        num_warps=nw,
        num_stages=ns,
    )
    return G, Aqk, Akk, w, hs, vn, ht


def chunk_kda_fwd(q, k, v, g, beta, scale: float, h0, output_final_state: bool, ch: Chunks):
    """Forward on contiguous inputs: ``o [B, T, H, V]`` (dtype of v), the final state ``[N, H, K, V]`` (fp32) or
    None, and ``Ai`` (fp32 ``[B, T, H, BT]``, for the backward)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    Ai = torch.empty(B, T, H, ch.BT, dtype=torch.float32, device=q.device)
    G, Aqk, _, _, hs, vn, ht = _recompute(q, k, v, g, beta, scale, Ai, h0, ch, output_final_state, True)
    o = torch.empty_like(v)
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    _fwd_o[(ch.NT, triton.cdiv(V, BV), H)](
        q,
        vn,
        G,
        hs,
        Aqk,
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
    return o, ht, Ai


def chunk_kda_bwd(q, k, v, g, beta, Ai, scale: float, h0, do, dht, ch: Chunks):
    """Backward on contiguous inputs: ``dq, dk, dv`` (input dtypes), ``dg`` (dtype of g), ``dbeta`` (dtype of
    beta) and ``dh0`` (fp32, or None without an initial state)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BT, NC = ch.BT, ch.BT // BC
    BK, BV = block_size(K, MAX_TILE), block_size(V, MAX_TILE)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    prec, dt = dot_precision(q.dtype), dot_dtype(q.dtype)
    G, Aqk, Akk, w, hs, vn, _ = _recompute(q, k, v, g, beta, scale, Ai, h0, ch, False, False)

    dvl = torch.empty_like(vn)
    _bwd_dv_local[(ch.NT, NV, H)](
        Aqk, do, dvl, ch.cu, ch.chunk_indices, H=H, V=V, BT=BT, BV=BV, PREC=prec, DT=dt, num_warps=num_warps(BT, BT, BV)
    )
    dA = Aqk  # Aqk is not needed again: its buffer takes dA = dL/dAqk * scale
    bwd_dA[(ch.NT, H)](
        do,
        vn,
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
    dhs, dvn = torch.empty_like(hs), torch.empty_like(vn)
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
        HAS_DHT=dht is not None,
        STORE_DH0=h0 is not None,
        PREC=prec,
        DT=dt,
        num_warps=snw,
        num_stages=sns,
    )

    # fp32 partials of dq, dk and dG, completed by _bwd_wy (the terms of W) and _bwd_intra (the pair terms)
    dq_part, dk_part, dG = (torch.empty(q.shape, dtype=torch.float32, device=q.device) for _ in range(3))
    dw = torch.empty_like(w)
    # narrower V (and K) tiles with 8 warps for the kernels with the most live [BT, BT] / [BT, BK] fp32 tiles, as
    # the delta rule's _bwd_dqk / _bwd_wy (64-wide tiles spill there)
    NB = block_size(V, min(MAX_TILE, 32))
    _bwd_inter[(ch.NT, NK, H)](
        q,
        k,
        vn,
        G,
        hs,
        do,
        dhs,
        dvn,
        dq_part,
        dk_part,
        dw,
        dG,
        ch.cu,
        ch.chunk_indices,
        scale,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=BK,
        BV=NB,
        PREC=prec,
        DT=dt,
        num_warps=8,
    )
    dv, dbeta = torch.empty_like(v), torch.empty_like(beta)
    _bwd_wy[(ch.NT, H)](
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
        ch.cu,
        ch.chunk_indices,
        H=H,
        K=K,
        V=V,
        BT=BT,
        BK=block_size(K, min(MAX_TILE, 32)),
        BV=NB,
        PREC=prec,
        num_warps=8,
    )
    dAkk = Akk  # overwritten by _bwd_wy
    dq, dk, dg = torch.empty_like(q), torch.empty_like(k), torch.empty_like(g)
    _bwd_intra[(ch.NT, NK, H)](
        q,
        k,
        G,
        dA,
        dAkk,
        dq_part,
        dk_part,
        dG,
        dq,
        dk,
        dg,
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
        num_warps=8,
    )
    return dq, dk, dv, dg, dbeta, dh0


class ChunkKDAFunction(torch.autograd.Function):
    """Autograd wrapper: ``apply(q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size,
    cu_seqlens)``."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size, cu_seqlens):
        B, T = q.shape[:2]
        ch = prepare_chunks(cu_seqlens, B, T, chunk_size, q.device)
        o, ht, Ai = chunk_kda_fwd(q, k, v, g, beta, scale, initial_state, output_final_state, ch)
        ctx.save_for_backward(q, k, v, g, beta, initial_state, Ai)
        ctx.scale, ctx.chunks = scale, ch
        ctx.set_materialize_grads(False)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, beta, h0, Ai = ctx.saved_tensors
        do = torch.zeros_like(v) if do is None else do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, dg, dbeta, dh0 = chunk_kda_bwd(q, k, v, g, beta, Ai, ctx.scale, h0, do, dht, ctx.chunks)
        dh0 = None if dh0 is None else dh0.to(h0.dtype)
        return dq, dk, dv, dg, dbeta, None, dh0, None, None, None
