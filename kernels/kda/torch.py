"""Kimi Delta Attention in plain PyTorch: a chunkwise-parallel WY/UT form with a per-key-channel decay for training
and prefill, and a step loop for decode. Differentiable by autograd; fp32 accumulation (fp64 for fp64 inputs).

The derivation and the stability argument are in README.md: every `exp` here is of a number <= 0.
"""

from __future__ import annotations

import torch

from kernels.utils import decayed_pairs, sub_chunked

__all__ = ["chunk_kda_torch", "fused_recurrent_kda_torch"]


def chunk_kda_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    sub_chunk: int | None = None,  # None: about sqrt(chunk_size) (kernels.utils.sub_chunked)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel KDA; same contract as ``naive_recurrent_kda``. T need not be a multiple of
    ``chunk_size`` (the tail is padded with q = k = v = 0, beta = 0, g = 0, which leave the state as it is);
    ``chunk_size`` is rounded up to a multiple of ``sub_chunk`` when it is larger."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    (q, k, v, g, beta), sub, C = sub_chunked((q, k, v, g, beta), chunk_size, sub_chunk, acc)
    N = q.shape[2]
    q = q * scale
    G = g.cumsum(-2)  # (B, H, N, C, K) cumulative log decay per key channel inside each chunk, non-increasing
    eG = G.exp()  # decay from the chunk start to token i (through token i's own decay)
    k_out = k * (G[..., -1:, :] - G).exp()  # k_i exp(G_C - G_i): decay from token i to the chunk end

    # UT transform, all chunks at once: the pseudo-values u = U - W S (S: the state entering the chunk) solve
    # (I + A) u = diag(beta) (V - (K * exp(G)) S), A[i, j] = beta_i k_i . (k_j exp(G_i - G_j)) for j < i.
    (A,) = decayed_pairs(k, (k,), G, G, sub, strict=True)
    A = A * beta[..., None]
    T_c = torch.linalg.solve_triangular(A, torch.diag_embed(beta), upper=False, unitriangular=True)
    U, W = T_c @ v, T_c @ (k * eG)  # (B, H, N, C, V), (B, H, N, C, K)
    (scores,) = decayed_pairs(q, (k,), G, G, sub, strict=False)  # (B, H, N, C, C) inclusive causal, decayed per channel
    q_in = q * eG

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = []
    per_chunk = (U.unbind(2), W.unbind(2), q_in.unbind(2), scores.unbind(2), k_out.unbind(2), eG[..., -1, :].unbind(2))
    for U_n, W_n, q_n, scores_n, k_n, decay_n in zip(*per_chunk, strict=True):
        v_new = U_n - W_n @ S  # (B, H, C, V) what each token writes
        o.append(q_n @ S + scores_n @ v_new)
        S = decay_n[..., None] * S + k_n.transpose(-1, -2) @ v_new  # per-channel whole-chunk decay, then writes
    o = torch.stack(o, dim=2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)


def fused_recurrent_kda_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step KDA for decode (T = 1 or a few tokens); same contract as the chunked form."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, beta = q.to(acc) * scale, k.to(acc), v.to(acc), beta.to(acc)
    decay = g.to(acc).exp()[..., None]  # (B, T, H, K, 1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        S = decay[:, t] * S
        recalled = (k[:, t, :, None, :] @ S).squeeze(-2)  # S^T k (B, H, V)
        S = S + k[:, t, :, :, None] * (beta[:, t, :, None] * (v[:, t] - recalled))[:, :, None, :]
        o[:, t] = (q[:, t, :, None, :] @ S).squeeze(-2)
    return o.to(out_dtype), (S if output_final_state else None)
