"""(Gated) delta rule in plain PyTorch: a chunkwise-parallel WY/UT form for training/prefill and a step loop for decode.

Both are differentiable by autograd and accumulate in fp32 (fp64 for fp64 inputs). The chunked form never
evaluates ``exp`` of a positive number, so it stays finite under arbitrarily strong decay; see README.md in
this folder for the derivation. ``g=None`` is the plain delta rule (no decay, and no ``exp`` at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.utils import decayed_outer_update

__all__ = [
    "chunk_delta_rule_torch",
    "chunk_gated_delta_rule_torch",
    "fused_recurrent_delta_rule_torch",
    "fused_recurrent_gated_delta_rule_torch",
]


def chunk_gated_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel gated delta rule. Same contract as ``naive_recurrent_gated_delta_rule``.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, H, V]``; g, beta ``[B, T, H]`` (``g=None``: the plain delta
    rule); initial_state ``[B, H, K, V]``. Returns ``o [B, T, H, V]`` (dtype of v) and the final state
    ``[B, H, K, V]`` in fp32 (fp64 for fp64 inputs), or None unless ``output_final_state``.
    T need not be a multiple of ``chunk_size``: the tail is padded with k = v = 0, beta = 0 and g = 0,
    which leaves the state unchanged, and the padded outputs are dropped.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    C = chunk_size
    N = -(-T // C)  # number of chunks
    pad = N * C - T

    def to_chunks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, *D) -> (B, H, N, C, *D)
        x = x.to(acc).transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0) * (x.ndim - 3) + (0, pad))
        return x.reshape(B, H, N, C, *x.shape[3:])

    q, k, v, beta = (to_chunks(x) for x in (q, k, v, beta))  # q, k (B, H, N, C, K); v (.., V); beta (.., C)
    q = q * scale
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # j <= i
    if g is None:
        decay = causal.to(acc)  # Gamma * causal: (C, C)
        q_in, k_in, k_out, chunk_decay = q, k, k, None
    else:
        G = to_chunks(g).cumsum(-1)  # (B, H, N, C) cumulative log decay inside each chunk, non-increasing
        # Gamma[i, j] = exp(G_i - G_j) for j <= i, 0 above the diagonal; the masked exponents (which would be
        # positive) become -inf before exp, so neither exp(+large) = inf nor inf * 0 = nan can appear.
        decay = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()  # (B, H, N, C, C)
        eG = G.exp().unsqueeze(-1)  # (B, H, N, C, 1) exp(G_i): decay from the chunk start to token i
        q_in, k_in = q * eG, k * eG  # how the entering state reaches token i
        k_out = k * (G[..., -1:] - G).exp().unsqueeze(-1)  # k_i exp(G_C - G_i): decay from token i to the chunk end
        chunk_decay = G[..., -1].exp()[..., None, None]  # (B, H, N, 1, 1) whole-chunk decay

    # UT transform, all chunks at once: T_c = (I + A)^{-1} diag(beta) with A = tril(diag(beta) (K K^T * Gamma), -1),
    # by a batched unit-lower-triangular solve (only the strict lower part of A is read); then U = T_c V, W = T_c K_in.
    A = (k @ k.transpose(-1, -2)) * decay * beta.unsqueeze(-1)  # (B, H, N, C, C)
    T_c = torch.linalg.solve_triangular(A.tril(-1), torch.diag_embed(beta), upper=False, unitriangular=True)
    U, W = T_c @ v, T_c @ k_in  # (B, H, N, C, V), (B, H, N, C, K)
    scores = (q @ k.transpose(-1, -2)) * decay  # (B, H, N, C, C) inclusive causal, decayed

    # inter-chunk: only the K x V state recurrence loops over chunks
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = []
    # unbind rather than index: the backward then assembles each gradient once, not once per chunk
    decays = [None] * N if chunk_decay is None else chunk_decay.unbind(2)
    per_chunk = (U.unbind(2), W.unbind(2), q_in.unbind(2), scores.unbind(2), k_out.unbind(2), decays)
    for U_n, W_n, q_n, scores_n, k_n, decay_n in zip(*per_chunk, strict=True):
        v_new = U_n - W_n @ S  # (B, H, C, V) pseudo-values: what each token writes
        o.append(q_n @ S + scores_n @ v_new)  # (B, H, C, V)
        contrib = k_n.transpose(-1, -2) @ v_new  # (B, H, K, V)
        S = S + contrib if decay_n is None else decay_n * S + contrib
    o = torch.stack(o, dim=2)  # (B, H, N, C, V)

    o = o.reshape(B, H, N * C, V)[:, :, :T].transpose(1, 2)  # (B, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def chunk_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunkwise-parallel delta rule: :func:`chunk_gated_delta_rule_torch` with no decay (same shapes)."""
    return chunk_gated_delta_rule_torch(q, k, v, None, beta, scale, initial_state, output_final_state, chunk_size)


def fused_recurrent_gated_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor | None,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step gated delta rule for decode (T = 1 or a few tokens). Same contract as the chunked form."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K**-0.5 if scale is None else scale
    q = q.to(acc) * scale
    k, v, beta = k.to(acc), v.to(acc), beta.to(acc)
    decay = None if g is None else g.to(acc).exp()[..., None, None]  # (B, T, H, 1, 1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(acc)
    o = q.new_empty(B, T, H, V)
    for t in range(T):
        d_t = None if decay is None else decay[:, t]  # (B, H, 1, 1): a scalar per head, so (d S)^T k = d (S^T k)
        kS = (k[:, t, :, None, :] @ S).squeeze(-2)  # (B, H, V) S^T k
        if d_t is not None:
            kS = kS * d_t[..., 0]
        delta = beta[:, t, :, None] * (v[:, t] - kS)  # (B, H, V) beta (v - (d S)^T k)
        S = decayed_outer_update(S, d_t, k[:, t], delta)  # d S + k delta^T, (B, H, K, V)
        o[:, t] = (q[:, t, :, None, :] @ S).squeeze(-2)  # (B, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def fused_recurrent_delta_rule_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step-by-step delta rule for decode: :func:`fused_recurrent_gated_delta_rule_torch` with no decay."""
    return fused_recurrent_gated_delta_rule_torch(q, k, v, None, beta, scale, initial_state, output_final_state)
