"""Reference gated DeltaProduct recurrence: the plain per-step loop, the oracle for every other backend.

Keep it short and obviously right; never optimize it.
"""

from __future__ import annotations

import torch

__all__ = ["naive_recurrent_gated_delta_product"]


def naive_recurrent_gated_delta_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    num_householder: int,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per token t: decay ``S <- exp(g_t) S``, then ``n = num_householder`` delta steps
    ``S <- S + beta_j k_j (v_j - S^T k_j)^T`` with the token's j-th key, value and write strength; read
    ``o_t = S^T (scale q_t)``.

    Shapes: q ``[B, T, H, K]``; k ``[B, T*n, H, K]``, v ``[B, T*n, H, V]``, beta ``[B, T*n, H]`` (token t's
    j-th step at ``t*n + j``); g ``[B, T, H]`` or None (no decay); initial_state ``[B, H, K, V]``. Returns
    ``o [B, T, H, V]`` (dtype of v) and the final state in fp32 (fp64 for fp64 inputs), or None.
    """
    B, T, H, K = q.shape
    n = num_householder
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, beta = (x.to(acc) for x in (q, k, v, beta))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    o = []
    for t in range(T):
        if g is not None:
            S = g[:, t, :, None, None].to(acc).exp() * S
        for j in range(t * n, t * n + n):
            k_j = k[:, j, :, :, None]  # (B, H, K, 1)
            recalled = (k_j * S).sum(-2)  # S^T k_j   (B, H, V)
            S = S + beta[:, j, :, None, None] * k_j * (v[:, j] - recalled)[:, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(o, dim=1).to(out_dtype), (S if output_final_state else None)
