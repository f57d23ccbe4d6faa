"""Reference simple-GLA recurrence: the plain per-step loop. It is the oracle for every other backend.

Keep it short and obviously right; never optimize it.
"""

from __future__ import annotations

import torch


def naive_recurrent_simple_gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None = None,
    g_gamma: torch.Tensor | None = None,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale * q_t S_t``, one step at a time.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g ``[B, T, H]`` or g_gamma ``[H]`` (constant
    ``g_t = g_gamma``) or neither (no decay); initial_state ``[B, H, K, V]``.
    Returns ``o [B, T, H, V]`` (dtype of v) and the final state ``[B, H, K, V]`` in fp32
    (fp64 for fp64 inputs), or None unless ``output_final_state``.
    """
    if g is not None and g_gamma is not None:
        raise ValueError("pass either g [B, T, H] or g_gamma [H], not both")
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v = (x.to(acc) for x in (q, k, v))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = []
    for t in range(T):
        if g is not None:
            S = g[:, t, :, None, None].to(acc).exp() * S
        elif g_gamma is not None:
            S = g_gamma[:, None, None].to(acc).exp() * S
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, K, V)
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))  # (B, H, V)
    o = torch.stack(o, dim=1)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)
