"""Reference (gated) delta rule recurrences: the plain per-step loops. They are the oracles for every other backend.

Keep them short and obviously right; never optimize them.
"""

from __future__ import annotations

import torch

__all__ = ["naive_recurrent_delta_rule", "naive_recurrent_gated_delta_rule"]


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``, step by step.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g, beta ``[B, T, H]`` (``g=None``: no decay, the
    plain delta rule); initial_state ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` (dtype of v) and the
    final state ``[B, H, K, V]`` in fp32 (fp64 for fp64 inputs), or None unless ``output_final_state``.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q, k, v, beta = (x.to(acc) for x in (q, k, v, beta))
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = []
    for t in range(T):
        k_t, b_t = k[:, t, :, :, None], beta[:, t, :, None, None]  # (B, H, K, 1), (B, H, 1, 1)
        erase = b_t * k_t * (k_t * S).sum(-2, keepdim=True)  # beta_t k_t (k_t^T S)   (B, H, K, V)
        write = b_t * k_t * v[:, t, :, None, :]  # beta_t k_t v_t^T              (B, H, K, V)
        decay = 1.0 if g is None else g[:, t, :, None, None].to(acc).exp()  # exp(g_t)  (B, H, 1, 1)
        S = decay * (S - erase) + write
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))  # (B, H, V)
    o = torch.stack(o, dim=1)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def naive_recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``, step by step.

    The gated recurrence with ``g = 0``; shapes and returns as :func:`naive_recurrent_gated_delta_rule`.
    """
    return naive_recurrent_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state)
