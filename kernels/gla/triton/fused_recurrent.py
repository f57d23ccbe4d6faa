"""Step-by-step GLA in Triton, for decode (T = 1 or a few tokens); forward only.

One program per (sequence and head, V tile, K tile) keeps its ``[BK, BV]`` tile of the state in
registers and walks the tokens: ``S = exp(g_t)[:, None] * S + k_t^T v_t``, ``o_t = scale q_t S``. When
K needs more than one tile, each K tile writes a partial output (fp32) and the tiles are summed.
Sequences are the rows of a ``[B, T]`` batch or packed along T by ``cu_seqlens``. The gate is per
channel (GLA), one scalar per head and step (simple GLA) or absent: ``simple_gla`` shares this kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import block_size, seq_offsets

__all__ = ["fused_recurrent_gla_fwd"]


@triton.jit
def _fused_recurrent(
    q,
    k,
    v,
    g,
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
    SCALAR_GATE: tl.constexpr,
    HAS_GATE: tl.constexpr,
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
    o += i_k.to(tl.int64) * o_tile_stride  # this K tile's slice of the partial outputs (0 when K is one tile)
    for t in range(bos, eos):
        row = t * H + i_h
        b_q = tl.load(q + row * K + o_k, mask=m_k, other=0).to(tl.float32) * scale
        b_k = tl.load(k + row * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(v + row * V + o_v, mask=m_v, other=0).to(tl.float32)
        if HAS_GATE:
            if SCALAR_GATE:  # simple GLA: one log decay per head and step
                b_h *= tl.exp(tl.load(g + row).to(tl.float32))
            else:
                b_h *= tl.exp(tl.load(g + row * K + o_k, mask=m_k, other=0).to(tl.float32))[:, None]
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], 0)
        tl.store(o + row * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


def fused_recurrent_gla_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the recurrence on contiguous inputs.

    q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g ``[B, T, H, K]`` (GLA), ``[B, T, H]`` (simple GLA) or
    None (no decay); initial_state ``[N, H, K, V]``; cu_seqlens ``[N + 1]`` or None (N = B).
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[N, H, K, V]`` (fp32) or None.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cu = seq_offsets(cu_seqlens, B, T, q.device)
    N = cu.numel() - 1
    BK, BV = block_size(K, cap=256), block_size(V, cap=32)
    NK, NV = triton.cdiv(K, BK), triton.cdiv(V, BV)
    o = torch.empty_like(v) if NK == 1 else torch.empty(NK, *v.shape, dtype=torch.float32, device=v.device)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    _fused_recurrent[(N * H, NV, NK)](
        q,
        k,
        v,
        g,
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
        SCALAR_GATE=g is not None and g.ndim == 3,
        HAS_GATE=g is not None,
    )
    if NK > 1:
        o = o.sum(0).to(v.dtype)
    return o, ht
