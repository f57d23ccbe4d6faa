"""Reference RWKV-5/6 recurrence: the plain per-step loop. It is the oracle for every other backend.

Keep it short and obviously right; never optimize it.
"""

from __future__ import annotations

import torch


def naive_recurrent_rwkv6(
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    u: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``o_t = scale * r_t (S_{t-1} + diag(u) k_t^T v_t)``, ``S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t``.

    Shapes: r, k, w ``[B, T, H, K]``; v ``[B, T, H, V]``; u ``[H, K]``; initial_state ``[B, H, K, V]``.
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[B, H, K, V]`` in fp32
    (fp64 for fp64 inputs), or None unless ``output_final_state``.
    """
    B, T, H, K = r.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(r.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    r, k, v, w, u = (x.to(acc) for x in (r, k, v, w, u))
    S = r.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        o.append(torch.einsum("bhk,bhkv->bhv", r[:, t] * scale, S + u[:, :, None] * kv))  # (B, H, V)
        S = w[:, t, :, :, None].exp() * S + kv
    o = torch.stack(o, dim=1)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)
