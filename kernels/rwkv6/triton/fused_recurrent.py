"""Step-by-step RWKV-6 in Triton, for decode (T = 1 or a few tokens); forward only.

One program per (sequence and head, V tile, K tile) keeps its ``[BK, BV]`` tile of the state in registers
and walks the tokens::

    o_t = scale r_t (S + diag(u) k_t^T v_t)
    S   = diag(exp(w_t)) S + k_t^T v_t

When K needs more than one tile, each K tile writes a partial output (fp32) and the tiles are summed.
Sequences are the rows of a ``[B, T]`` batch or packed along T by ``cu_seqlens``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import block_size, seq_offsets

__all__ = ["fused_recurrent_rwkv6_fwd"]

MAX_BK, MAX_BV = 128, 32
"""Tile of the state held by one program (at most ``MAX_BK x MAX_BV`` fp32 values in registers)."""


@triton.jit
def _fused_recurrent(
    r,
    k,
    v,
    w,
    u,
    h0,
    o,
    ht,
    cu,
    scale,
    o_tile_stride,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    i_nh, i_v, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh * K * V + off_kv, mask=m_kv, other=0).to(tl.float32)
    b_u = tl.load(u + i_h * K + o_k, mask=m_k, other=0).to(tl.float32)
    o += i_k.to(tl.int64) * o_tile_stride  # this K tile's slice of the partial outputs (0 when K is one tile)
    for t in range(bos, eos):
        row = t * H + i_h
        b_r = tl.load(r + row * K + o_k, mask=m_k, other=0).to(tl.float32) * scale
        b_k = tl.load(k + row * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(v + row * V + o_v, mask=m_v, other=0).to(tl.float32)
        b_w = tl.load(w + row * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_kv = b_k[:, None] * b_v[None, :]
        b_o = tl.sum((b_h + b_u[:, None] * b_kv) * b_r[:, None], 0)  # reads the state before token t
        tl.store(o + row * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
        b_h = b_h * tl.exp(b_w)[:, None] + b_kv
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


def fused_recurrent_rwkv6_fwd(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the recurrence on contiguous inputs.

    r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial_state ``[N, H, K, V]``; cu_seqlens
    ``[N + 1]`` or None (N = B). Returns ``o [B, T, H, V]`` (dtype of v) and the final state
    ``[N, H, K, V]`` (fp32) or None.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    cu = seq_offsets(cu_seqlens, B, T, r.device)
    N = cu.numel() - 1
    BK, BV = block_size(K, cap=MAX_BK), block_size(V, cap=MAX_BV)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    o = torch.empty_like(v) if NK == 1 else torch.empty(NK, *v.shape, dtype=torch.float32, device=v.device)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=r.device) if output_final_state else None
    _fused_recurrent[(N * H, NV, NK)](
        r,
        k,
        v,
        w,
        u,
        initial_state,
        o,
        ht,
        cu,
        scale,
        v.numel(),
        H=H,
        K=K,
        V=V,
        BK=BK,
        BV=BV,
        HAS_H0=initial_state is not None,
        STORE_HT=output_final_state,
    )
    if NK > 1:
        o = o.sum(0).to(v.dtype)
    return o, ht
