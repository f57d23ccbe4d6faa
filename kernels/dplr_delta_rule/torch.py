"""The DPLR delta rule in plain PyTorch: a chunkwise WY/UT form with a per-key-channel decay for training and
prefill, and a step loop for decode. Differentiable by autograd; fp32 accumulation (fp64 for fp64 inputs).

The derivation is in README.md; every `exp` is of a number <= 0 (`kernels.utils.decayed_pairs`).
"""

from __future__ import annotations

import torch

from kernels.utils import decayed_pairs, sub_chunked

__all__ = ["chunk_dplr_delta_rule_torch", "fused_recurrent_dplr_delta_rule_torch"]


def chunk_dplr_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    sub_chunk: int | None = None,  # None: about sqrt(chunk_size) (kernels.utils.sub_chunked)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel DPLR delta rule; same contract as ``naive_recurrent_dplr_delta_rule``. T need not be a
    multiple of ``chunk_size`` (the tail is padded with zeros and gk = 0, which leave the state as it is);
    ``chunk_size`` is rounded up to a multiple of ``sub_chunk`` when it is larger."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    (q, k, v, a, b, gk), sub, C = sub_chunked((q, k, v, a, b, gk), chunk_size, sub_chunk, acc)
    N = q.shape[2]
    q = q * scale
    G = gk.cumsum(-2)  # (B, H, N, C, K) inclusive cumulative log decay per channel, non-increasing
    Gp = G - gk  # exclusive: the decay before token i's own (the low-rank term reads the undecayed state)

    # The low-rank term's pseudo-values u_i = S_{i-1}^T a_i, for all chunks at once: u = U + W S with S the entering
    # state, from (I - A_ab) u = A_ak V + (a * exp(Gp)) S; A_xy[i, j] = sum_c x_ic y_jc exp(Gp_ic - G_jc), j < i.
    A_ab, A_ak = decayed_pairs(a, (b, k), Gp, G, sub, strict=True)
    eye = torch.eye(C, dtype=acc, device=q.device)
    T_c = torch.linalg.solve_triangular(-A_ab, eye.expand_as(A_ab), upper=False, unitriangular=True)  # (I - A_ab)^-1
    U, W = T_c @ (A_ak @ v), T_c @ (a * Gp.exp())  # (B, H, N, C, V), (B, H, N, C, K)
    A_qk, A_qb = decayed_pairs(q, (k, b), G, G, sub, strict=False)  # inclusive: o_i reads S_i
    q_in = q * G.exp()
    to_end = (G[..., -1:, :] - G).exp()  # decay from token j to the chunk end
    k_out, b_out = k * to_end, b * to_end

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = []
    per_chunk = [x.unbind(2) for x in (U, W, q_in, A_qk, A_qb, v, k_out, b_out, G[..., -1, :].exp())]
    for U_n, W_n, q_n, qk_n, qb_n, v_n, k_n, b_n, decay_n in zip(*per_chunk, strict=True):
        u = U_n + W_n @ S  # (B, H, C, V)
        o.append(q_n @ S + qk_n @ v_n + qb_n @ u)
        S = decay_n[..., None] * S + k_n.transpose(-1, -2) @ v_n + b_n.transpose(-1, -2) @ u
    o = torch.stack(o, dim=2).reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), (S if output_final_state else None)


def fused_recurrent_dplr_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    gk: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step DPLR delta rule for decode (T = 1 or a few tokens); same contract as the chunked form."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, a, b = q.to(acc) * scale, k.to(acc), v.to(acc), a.to(acc), b.to(acc)
    decay = gk.to(acc).exp()[..., None]  # (B, T, H, K, 1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        aS = a[:, t, :, None, :] @ S  # a^T S (B, H, 1, V)
        S = decay[:, t] * S + b[:, t, :, :, None] * aS + k[:, t, :, :, None] * v[:, t, :, None, :]
        o[:, t] = (q[:, t, :, None, :] @ S).squeeze(-2)
    return o.to(out_dtype), (S if output_final_state else None)
