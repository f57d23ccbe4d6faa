"""Step-by-step Kimi Delta Attention in Triton, for decode (T = 1 or a few tokens); forward only.

One program per (sequence and head, V tile) keeps a ``[K, BV]`` slice of the state in registers (all of K: the
erase ``S^T k`` contracts over it) and walks the tokens::

    S <- Diag(exp(g_t)) S                 (each key channel, a row of S, decays at its own rate)
    S <- S + k_t (beta_t (v_t - S^T k_t))^T
    o_t = S^T (scale q_t)

Sequences are the rows of a ``[B, T]`` batch or packed along T by ``cu_seqlens``. The backward is not a fused
kernel: with autograd recording, ``kernels.kda.triton`` runs the chunked Triton kernels instead (the same
recurrence, with Triton backward kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton_utils import recurrent_tiles, seq_offsets

__all__ = ["fused_recurrent_kda_fwd"]


@triton.jit
def _fused_recurrent(
    q,
    k,
    v,
    g,
    beta,
    h0,
    o,
    ht,
    cu,
    scale,
    H: tl.constexpr,
    K: tl.constexpr,
    V: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    HAS_H0: tl.constexpr,
    STORE_HT: tl.constexpr,
):
    i_nh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos = tl.load(cu + i_n), tl.load(cu + i_n + 1)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh * K * V + off_kv, mask=m_kv, other=0).to(tl.float32)
    for t in range(bos, eos):
        row = t * H + i_h
        b_q = tl.load(q + row * K + o_k, mask=m_k, other=0).to(tl.float32) * scale
        b_k = tl.load(k + row * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_v = tl.load(v + row * V + o_v, mask=m_v, other=0).to(tl.float32)
        b_g = tl.load(g + row * K + o_k, mask=m_k, other=0).to(tl.float32)
        b_beta = tl.load(beta + row).to(tl.float32)
        b_h *= tl.exp(b_g)[:, None]
        b_delta = (b_v - tl.sum(b_h * b_k[:, None], 0)) * b_beta  # beta (v - S^T k)   [BV]
        b_h += b_k[:, None] * b_delta[None, :]
        tl.store(o + row * V + o_v, tl.sum(b_h * b_q[:, None], 0).to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(ht + i_nh * K * V + off_kv, b_h, mask=m_kv)


def fused_recurrent_kda_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the recurrence on contiguous inputs.

    q, k, g ``[B, T, H, K]``; v ``[B, T, H, V]``; beta ``[B, T, H]``; initial_state ``[N, H, K, V]``; cu_seqlens
    ``[N + 1]`` or None (N = B). K <= 256. Returns ``o [B, T, H, V]`` (dtype of v) and the final state
    ``[N, H, K, V]`` (fp32) or None.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cu = seq_offsets(cu_seqlens, B, T, q.device)
    N = cu.numel() - 1
    BK, BV = recurrent_tiles(K, V)
    o = torch.empty_like(v)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    _fused_recurrent[(N * H, triton.cdiv(V, BV))](
        q,
        k,
        v,
        g,
        beta,
        initial_state,
        o,
        ht,
        cu,
        scale,
        H=H,
        K=K,
        V=V,
        BK=BK,
        BV=BV,
        HAS_H0=initial_state is not None,
        STORE_HT=output_final_state,
    )
    return o, ht
