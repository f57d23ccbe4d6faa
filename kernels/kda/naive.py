"""Reference Kimi Delta Attention recurrence: the plain per-step loop, the oracle for every other backend.

Keep it short and obviously right; never optimize it.
"""

from __future__ import annotations

import torch

__all__ = ["naive_recurrent_kda"]


def naive_recurrent_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S <- Diag(exp(g_t)) S``, then ``S <- S + beta_t k_t (v_t - S^T k_t)^T``, ``o_t = S^T (scale q_t)``.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g ``[B, T, H, K]`` (log decay per key channel, <= 0);
    beta ``[B, T, H]``; initial_state ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` (dtype of v) and the final
    state in fp32 (fp64 for fp64 inputs), or None unless ``output_final_state``.
    """
    B, T, H, K = q.shape
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, g, beta = (x.to(acc) for x in (q, k, v, g, beta))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    o = []
    for t in range(T):
        S = g[:, t, :, :, None].exp() * S  # each key channel (row of S) decays at its own rate
        k_t = k[:, t, :, :, None]  # (B, H, K, 1)
        recalled = (k_t * S).sum(-2)  # S^T k_t (B, H, V)
        S = S + beta[:, t, :, None, None] * k_t * (v[:, t] - recalled)[:, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(o, dim=1).to(out_dtype), (S if output_final_state else None)
