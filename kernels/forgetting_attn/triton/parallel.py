"""Forgetting attention in Triton: flash-attention forward and backward kernels behind one
``torch.autograd.Function``.

Every sequence has ``Tn`` queries and ``Sn >= Tn`` keys; the queries are its last ``Tn`` positions (``Sn = Tn``
for training and prefill; a KV cache for continuation), so query ``t`` sits at key position ``p = Sn - Tn + t``.
With ``gq`` / ``gk`` the cumulative log forget gates of queries and keys (fp32)::

    s_pj = scale q_p . k_j + gq_p - gk_j      over j <= p (and j > p - W with a window)
    o_p  = sum_j softmax_j(s_pj) v_j,         lse_p = log sum_j exp(s_pj)

The forward keeps a running row max ``m`` and rescales, so every ``exp`` argument is <= 0 (``s - m`` and
``m_old - m``); the backward recomputes ``P = exp(s - lse)``, again <= 0. ``m`` starts at a finite floor instead of
``-inf``: a key block whose logits are all ``-inf`` (masked, or a stacked cache's padding slots with ``gk = +inf``)
then adds ``exp(-inf) = 0`` rather than ``exp(-inf + inf) = NaN``.

Kernels (grid in brackets; NQ query blocks and NS key blocks in all, N sequences, G = HQ / H query heads per
key/value head):

    ``_fwd``     [NQ, HQ]   o and lse of a query block, key blocks outside the causal window skipped
    ``_bwd_dq``  [NQ, HQ]   dq_p = scale sum_j dS_pj k_j and the row sums sum_j dS_pj
    ``_bwd_dkv`` [NS, H]    dk_j = scale sum_p dS_pj q_p, dv_j = sum_p P_pj do_p over the G query heads of a
                            key/value head (no per-query-head copies of dk / dv), and per query head the column
                            sums -sum_p dS_pj
    ``_cumsum``  [N, HQ]    per-sequence (reverse) cumsum: G = cumsum(g) and dg = reverse cumsum(dG)

with ``dS = P (dP - delta)``, ``dP = do v^T``, ``delta_p = do_p . o_p`` (torch). The gate gradient: ``gq_p`` adds
to row p, ``-gk_j`` to column j, so ``dL/dgq_p = sum_j dS_pj`` and ``dL/dgk_j = -sum_p dS_pj``. For training,
``gq = gk = G`` with ``G_t = g_1 + ... + g_t`` over the sequence, so ``dG = rows - columns`` and
``dg_t = sum_{s >= t} dG_s``. The row sum is zero in exact arithmetic (``sum_j P_pj dP_pj = do_p . o_p = delta_p``
and ``sum_j P_pj = 1``: a constant added to a row leaves its softmax alone). It is kept because ``delta`` comes
from the stored (rounded) o: with both terms, ``dG`` sums to zero over a sequence whatever that rounding (every
``dS`` entry is added once and subtracted once), so ``dg_1 = 0`` as it must be (g_1 never enters a logit).

Operands of ``tl.dot`` are cast to ``DT``, the input dtype (``P`` and ``dS`` too, as in flash attention); fp32
uses exact products unless torch allows TF32 (``dot_dtype`` / ``dot_precision``); accumulation is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import Chunks, block_size, chunk_span, dot_dtype, dot_precision, prepare_chunks

__all__ = ["forgetting_attn_fwd", "forgetting_attn_bwd", "seq_cumsum", "ForgettingAttnFunction", "MAX_HEAD_DIM"]

BLOCK = 64
"""Largest query / key block (rows of the score tile); see :func:`blocks`."""

NUM_WARPS = 4
"""Warps of the attention kernels (8 for ``_bwd_dkv`` at head dims <= 64): with the tiles of :func:`blocks`,
these compile without register spills for 16-bit inputs where 8 (or 4) warps spill (``compile_check.py``)."""

MAX_HEAD_DIM = 256
"""K and V are each held in one tile (a program never splits a row of q, k, v or o)."""

M_FLOOR: tl.constexpr = tl.constexpr(-1e30)
"""Start of the running row max: finite, so that an all ``-inf`` key block gives 0, not NaN."""


@triton.jit
def _seq_bounds(cu_q, cu_k, i_n):
    """Sequence ``i_n`` -> (first query row, first key row, number of keys, key position of its first query)."""
    bos_q, eos_q = tl.load(cu_q + i_n), tl.load(cu_q + i_n + 1)
    bos_k, eos_k = tl.load(cu_k + i_n), tl.load(cu_k + i_n + 1)
    return bos_q, bos_k, eos_k - bos_k, (eos_k - bos_k) - (eos_q - bos_q)


@triton.jit
def _fwd(
    q,
    k,
    v,
    gq,
    gk,
    o,
    lse,
    cu_q,
    cu_k,
    chunk_indices,
    scale,
    W,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    WINDOW: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_hq = tl.program_id(0), tl.program_id(1)
    H: tl.constexpr = HQ // G
    i_h = i_hq // G
    i_n, t0, n = chunk_span(cu_q, chunk_indices, i_c, BT)
    bos_q, bos_k, _, shift = _seq_bounds(cu_q, cu_k, i_n)
    p0 = shift + t0 - bos_q  # key position of the block's first query
    o_t, o_s, o_k, o_v = tl.arange(0, BT), tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    m_t, m_k, m_v = o_t < n, o_k < K, o_v < V
    pos = p0 + o_t
    rows = (t0 + o_t) * HQ + i_hq
    b_q = tl.load(q + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0).to(DT)
    b_gq = tl.load(gq + rows, mask=m_t, other=0).to(tl.float32)

    b_m = tl.full([BT], M_FLOOR, dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    lo = 0
    if WINDOW:  # the first key any query of the block sees
        lo = tl.maximum(p0 - W + 1, 0)
    for j0 in range(lo, p0 + n, BS):
        o_j = j0 + o_s
        m_j = o_j < p0 + n
        rows_k = (bos_k + o_j) * H + i_h
        b_kT = tl.load(k + rows_k[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_j[None, :], other=0)
        b_v = tl.load(v + rows_k[:, None] * V + o_v[None, :], mask=m_j[:, None] & m_v[None, :], other=0)
        b_gk = tl.load(gk + (bos_k + o_j) * HQ + i_hq, mask=m_j, other=0).to(tl.float32)
        b_s = tl.dot(b_q, b_kT.to(DT), input_precision=PREC) * scale + b_gq[:, None] - b_gk[None, :]
        allowed = (o_j[None, :] <= pos[:, None]) & m_t[:, None]
        if WINDOW:
            allowed &= o_j[None, :] > pos[:, None] - W
        b_s = tl.where(allowed, b_s, float("-inf"))
        b_mn = tl.maximum(b_m, tl.max(b_s, 1))
        b_p = tl.exp(b_s - b_mn[:, None])
        b_r = tl.exp(b_m - b_mn)
        b_l = b_l * b_r + tl.sum(b_p, 1)
        b_o = b_o * b_r[:, None] + tl.dot(b_p.to(DT), b_v.to(DT), input_precision=PREC)
        b_m = b_mn
    b_l = tl.where(b_l > 0, b_l, 1)  # a row that sees no finite logit (rows past the end): o = 0
    tl.store(
        o + rows[:, None] * V + o_v[None, :],
        (b_o / b_l[:, None]).to(o.dtype.element_ty),
        mask=m_t[:, None] & m_v[None, :],
    )
    tl.store(lse + rows, b_m + tl.log(b_l), mask=m_t)


@triton.jit
def _bwd_dq(
    q,
    k,
    v,
    gq,
    gk,
    lse,
    delta,
    do,
    dq,
    dgq,
    cu_q,
    cu_k,
    chunk_indices,
    scale,
    W,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    WINDOW: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_hq = tl.program_id(0), tl.program_id(1)
    H: tl.constexpr = HQ // G
    i_h = i_hq // G
    i_n, t0, n = chunk_span(cu_q, chunk_indices, i_c, BT)
    bos_q, bos_k, _, shift = _seq_bounds(cu_q, cu_k, i_n)
    p0 = shift + t0 - bos_q
    o_t, o_s, o_k, o_v = tl.arange(0, BT), tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    m_t, m_k, m_v = o_t < n, o_k < K, o_v < V
    pos = p0 + o_t
    rows = (t0 + o_t) * HQ + i_hq
    b_q = tl.load(q + rows[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0).to(DT)
    b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :], other=0).to(DT)
    b_gq = tl.load(gq + rows, mask=m_t, other=0).to(tl.float32)
    b_lse = tl.load(lse + rows, mask=m_t, other=0)
    b_delta = tl.load(delta + rows, mask=m_t, other=0)

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dg = tl.zeros([BT], dtype=tl.float32)
    lo = 0
    if WINDOW:
        lo = tl.maximum(p0 - W + 1, 0)
    for j0 in range(lo, p0 + n, BS):
        o_j = j0 + o_s
        m_j = o_j < p0 + n
        rows_k = (bos_k + o_j) * H + i_h
        b_kT = tl.load(k + rows_k[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_j[None, :], other=0).to(DT)
        b_vT = tl.load(v + rows_k[None, :] * V + o_v[:, None], mask=m_v[:, None] & m_j[None, :], other=0).to(DT)
        b_gk = tl.load(gk + (bos_k + o_j) * HQ + i_hq, mask=m_j, other=0).to(tl.float32)
        b_s = tl.dot(b_q, b_kT, input_precision=PREC) * scale + b_gq[:, None] - b_gk[None, :]
        allowed = (o_j[None, :] <= pos[:, None]) & m_t[:, None]
        if WINDOW:
            allowed &= o_j[None, :] > pos[:, None] - W
        # lse >= every logit of its row; the minimum only absorbs a last-bit difference of the recomputed dot
        b_p = tl.exp(tl.minimum(tl.where(allowed, b_s - b_lse[:, None], float("-inf")), 0))
        b_ds = b_p * (tl.dot(b_do, b_vT, input_precision=PREC) - b_delta[:, None])
        b_dq += tl.dot(b_ds.to(DT), tl.trans(b_kT), input_precision=PREC)
        b_dg += tl.sum(b_ds, 1)
    tl.store(
        dq + rows[:, None] * K + o_k[None, :], (b_dq * scale).to(dq.dtype.element_ty), mask=m_t[:, None] & m_k[None, :]
    )
    tl.store(dgq + rows, b_dg, mask=m_t)


@triton.jit
def _bwd_dkv(
    q,
    k,
    v,
    gq,
    gk,
    lse,
    delta,
    do,
    dk,
    dv,
    dgk,
    cu_q,
    cu_k,
    chunk_indices,
    scale,
    W,
    HQ: tl.constexpr,
    G: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    WINDOW: tl.constexpr,
    PREC: tl.constexpr,
    DT: tl.constexpr,
):
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    H: tl.constexpr = HQ // G
    i_n, s0, n = chunk_span(cu_k, chunk_indices, i_c, BS)
    bos_q, bos_k, S, shift = _seq_bounds(cu_q, cu_k, i_n)
    Tn = S - shift
    j0 = s0 - bos_k  # position of the block's first key
    o_t, o_s, o_k, o_v = tl.arange(0, BT), tl.arange(0, BS), tl.arange(0, BK), tl.arange(0, BV)
    m_s, m_k, m_v = o_s < n, o_k < K, o_v < V
    o_j = j0 + o_s
    rows_k = (s0 + o_s) * H + i_h
    b_k = tl.load(k + rows_k[:, None] * K + o_k[None, :], mask=m_s[:, None] & m_k[None, :], other=0).to(DT)
    b_v = tl.load(v + rows_k[:, None] * V + o_v[None, :], mask=m_s[:, None] & m_v[None, :], other=0).to(DT)
    # the queries that see one of these keys, as query indices: positions j0 .. (j0 + n - 1) + W - 1
    lo = tl.maximum(j0 - shift, 0)
    hi = Tn
    if WINDOW:
        hi = tl.minimum(j0 + n - 1 + W - shift, Tn)

    b_dk = tl.zeros([BS, BK], dtype=tl.float32)
    b_dv = tl.zeros([BS, BV], dtype=tl.float32)
    for i_g in range(0, G):
        i_hq = i_h * G + i_g
        b_gk = tl.load(gk + (s0 + o_s) * HQ + i_hq, mask=m_s, other=0).to(tl.float32)
        b_dg = tl.zeros([BS], dtype=tl.float32)
        for t in range(lo, hi, BT):
            o_i = t + o_t
            m_i = o_i < hi
            pos = shift + o_i
            rows = (bos_q + o_i) * HQ + i_hq
            b_qT = tl.load(q + rows[None, :] * K + o_k[:, None], mask=m_k[:, None] & m_i[None, :], other=0).to(DT)
            b_do = tl.load(do + rows[:, None] * V + o_v[None, :], mask=m_i[:, None] & m_v[None, :], other=0).to(DT)
            b_gq = tl.load(gq + rows, mask=m_i, other=0).to(tl.float32)
            b_lse = tl.load(lse + rows, mask=m_i, other=0)
            b_delta = tl.load(delta + rows, mask=m_i, other=0)
            b_sT = tl.dot(b_k, b_qT, input_precision=PREC) * scale + b_gq[None, :] - b_gk[:, None]  # [BS, BT]
            allowed = (o_j[:, None] <= pos[None, :]) & m_i[None, :] & m_s[:, None]
            if WINDOW:
                allowed &= o_j[:, None] > pos[None, :] - W
            b_pT = tl.exp(tl.minimum(tl.where(allowed, b_sT - b_lse[None, :], float("-inf")), 0))
            b_dv += tl.dot(b_pT.to(DT), b_do, input_precision=PREC)
            b_dsT = b_pT * (tl.dot(b_v, tl.trans(b_do), input_precision=PREC) - b_delta[None, :])
            b_dk += tl.dot(b_dsT.to(DT), tl.trans(b_qT), input_precision=PREC)
            b_dg -= tl.sum(b_dsT, 1)
        tl.store(dgk + (s0 + o_s) * HQ + i_hq, b_dg, mask=m_s)
    tl.store(
        dk + rows_k[:, None] * K + o_k[None, :],
        (b_dk * scale).to(dk.dtype.element_ty),
        mask=m_s[:, None] & m_k[None, :],
    )
    tl.store(dv + rows_k[:, None] * V + o_v[None, :], b_dv.to(dv.dtype.element_ty), mask=m_s[:, None] & m_v[None, :])


@triton.jit
def _cumsum(x, y, cu, HQ: tl.constexpr, BT: tl.constexpr, REVERSE: tl.constexpr):
    i_n, i_h = tl.program_id(0), tl.program_id(1)
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    nb = tl.cdiv(eos - bos, BT)
    o_t = tl.arange(0, BT)
    b_carry = tl.zeros([1], dtype=tl.float32)
    for i in range(0, nb):
        i_b = i
        if REVERSE:
            i_b = nb - 1 - i
        t0 = bos + i_b * BT
        m = o_t < eos - t0
        b_x = tl.load(x + (t0 + o_t) * HQ + i_h, mask=m, other=0).to(tl.float32)
        tl.store(
            y + (t0 + o_t) * HQ + i_h, (tl.cumsum(b_x, 0, reverse=REVERSE) + b_carry).to(y.dtype.element_ty), mask=m
        )
        b_carry += tl.sum(b_x, 0)


# ----------------------------------------------------------------------------------------------- launchers


def blocks(T: int, K: int, V: int, dtype: torch.dtype) -> tuple[int, int]:
    """(query block, key block) for head dims K, V: the largest that compile for sm_90 without register spills
    with 16-bit inputs (``compile_check.py``), halved for fp32 operands (FMA loops for exact products; a few
    hundred bytes spill at most), capped at ``BLOCK``, and no more query rows than T needs (decode: 16)."""
    D = max(block_size(K, MAX_HEAD_DIM), block_size(V, MAX_HEAD_DIM))
    BT, BS = (64, 64) if D <= 64 else (64, 32) if D <= 128 else (32, 16)
    if dtype == torch.float32:
        BT, BS = max(16, BT // 2), max(16, BS // 2)
    return min(BLOCK, BT, max(16, triton.next_power_of_2(T))), min(BLOCK, BS)


def seq_cumsum(x: torch.Tensor, cu: torch.Tensor, reverse: bool = False, dtype: torch.dtype = torch.float32):
    """Cumsum (or reverse cumsum) of ``x [B, T, HQ]`` along each sequence of the flattened token axis (offsets
    ``cu``), accumulated in fp32 and returned in ``dtype``."""
    HQ = x.shape[-1]
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    _cumsum[(cu.numel() - 1, HQ)](x, y, cu, HQ=HQ, BT=64, REVERSE=reverse)
    return y


def _meta(q, k, v, scale, window_size):
    HQ, K = q.shape[-2:]
    H, V = k.shape[-2], v.shape[-1]
    BK, BV = block_size(K, MAX_HEAD_DIM), block_size(V, MAX_HEAD_DIM)
    return {
        "scale": scale,
        "W": 0 if window_size is None else int(window_size),
        "HQ": HQ,
        "G": HQ // H,
        "K": K,
        "V": V,
        "BK": BK,
        "BV": BV,
        "WINDOW": window_size is not None,
        "PREC": dot_precision(q.dtype),
        "DT": dot_dtype(q.dtype),
    }


def forgetting_attn_fwd(q, k, v, gq, gk, scale: float, window_size: int | None, chq: Chunks, chk: Chunks):
    """Contiguous inputs, cumulative gates ``gq [B, T, HQ]``, ``gk [B, S, HQ]`` (fp32): ``o`` (dtype of q) and the
    fp32 ``lse [B, T, HQ]``."""
    c = _meta(q, k, v, scale, window_size)
    o = torch.empty(*q.shape[:-1], c["V"], dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    _fwd[(chq.NT, c["HQ"])](
        q,
        k,
        v,
        gq,
        gk,
        o,
        lse,
        chq.cu,
        chk.cu,
        chq.chunk_indices,
        **c,
        BT=chq.BT,
        BS=chk.BT,
        num_warps=NUM_WARPS,
    )
    return o, lse


def forgetting_attn_bwd(q, k, v, gq, gk, o, lse, do, scale: float, window_size, chq: Chunks, chk: Chunks):
    """``dq, dk, dv`` in the input dtypes and the fp32 gradients of the cumulative gates: ``dgq`` (row sums of
    dS) and ``dgk`` (minus the column sums)."""
    c = _meta(q, k, v, scale, window_size)
    delta = (do.float() * o.float()).sum(-1)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dgq = torch.empty(gq.shape, dtype=torch.float32, device=q.device)
    dgk = torch.empty(gk.shape, dtype=torch.float32, device=q.device)
    _bwd_dq[(chq.NT, c["HQ"])](
        q,
        k,
        v,
        gq,
        gk,
        lse,
        delta,
        do,
        dq,
        dgq,
        chq.cu,
        chk.cu,
        chq.chunk_indices,
        **c,
        BT=chq.BT,
        BS=chk.BT,
        num_warps=NUM_WARPS,
    )
    _bwd_dkv[(chk.NT, k.shape[-2])](
        q,
        k,
        v,
        gq,
        gk,
        lse,
        delta,
        do,
        dk,
        dv,
        dgk,
        chq.cu,
        chk.cu,
        chk.chunk_indices,
        **c,
        BT=chq.BT,
        BS=chk.BT,
        num_warps=8 if max(c["BK"], c["BV"]) <= 64 else NUM_WARPS,
    )
    return dq, dk, dv, dgq, dgk


class ForgettingAttnFunction(torch.autograd.Function):
    """``apply(q, k, v, g, gc_k, scale, window_size, cu_seqlens)`` on contiguous inputs of one dtype.

    ``gc_k=None`` (training, prefill): ``g [B, T, HQ]`` are the log forget gates, cumulated per sequence here
    (``cu_seqlens`` packs sequences, B = 1); the gradient is the reverse cumsum of ``dG = rows - columns``.
    Otherwise (a KV cache): ``g`` is ``gc_q [B, T, HQ]`` and ``gc_k [B, S, HQ]``, both cumulative, with their
    own gradients; ``cu_seqlens`` must be None. Returns ``o [B, T, HQ, V]`` in the dtype of q.
    """

    @staticmethod
    def forward(ctx, q, k, v, g, gc_k, scale, window_size, cu_seqlens):
        B, T, _, K = q.shape
        S, V = k.shape[1], v.shape[-1]
        BT, BS = blocks(T, K, V, q.dtype)
        chq = prepare_chunks(cu_seqlens, B, T, BT, q.device)
        chk = prepare_chunks(cu_seqlens, B, S, BS, q.device)
        gq = seq_cumsum(g, chq.cu) if gc_k is None else g
        gk = gq if gc_k is None else gc_k
        o, lse = forgetting_attn_fwd(q, k, v, gq, gk, scale, window_size, chq, chk)
        ctx.save_for_backward(q, k, v, gq, gk, o, lse)
        ctx.scale, ctx.window_size, ctx.chunks = scale, window_size, (chq, chk)
        ctx.cumulate, ctx.g_dtypes = gc_k is None, (g.dtype, None if gc_k is None else gc_k.dtype)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, gq, gk, o, lse = ctx.saved_tensors
        chq, chk = ctx.chunks
        dq, dk, dv, dgq, dgk = forgetting_attn_bwd(
            q, k, v, gq, gk, o, lse, do.contiguous(), ctx.scale, ctx.window_size, chq, chk
        )
        if ctx.cumulate:
            dg = seq_cumsum(dgq + dgk, chq.cu, reverse=True, dtype=ctx.g_dtypes[0])
            return dq, dk, dv, dg, None, None, None, None
        return dq, dk, dv, dgq.to(ctx.g_dtypes[0]), dgk.to(ctx.g_dtypes[1]), None, None, None
