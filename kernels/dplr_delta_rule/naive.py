"""Reference DPLR (diagonal plus low-rank) delta rule: the plain per-step loop, the oracle for every other backend.

Keep it short and obviously right; never optimize it.
"""

from __future__ import annotations

import torch

__all__ = ["naive_recurrent_dplr_delta_rule"]


def naive_recurrent_dplr_delta_rule(
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
    """``S_t = Diag(exp(gk_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T``, ``o_t = S_t^T (scale q_t)``.

    Shapes: q, k, a, b, gk ``[B, T, H, K]`` (gk: log decay per key channel, <= 0); v ``[B, T, H, V]``;
    initial_state ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` (dtype of v) and the final state in fp32 (fp64 for
    fp64 inputs), or None unless ``output_final_state``.
    """
    B, T, H, K = q.shape
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, a, b, gk = (x.to(acc) for x in (q, k, v, a, b, gk))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(acc)
    o = []
    for t in range(T):
        low_rank = b[:, t, :, :, None] * (a[:, t, :, :, None] * S).sum(-2, keepdim=True)  # b (a^T S)  (B, H, K, V)
        S = gk[:, t, :, :, None].exp() * S + low_rank + k[:, t, :, :, None] * v[:, t, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return torch.stack(o, dim=1).to(out_dtype), (S if output_final_state else None)
