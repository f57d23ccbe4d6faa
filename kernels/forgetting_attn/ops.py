"""Public forgetting attention ops (family ``forgetting_attn``): :func:`parallel_forgetting_attn` (fla's name;
training and prefill) and :func:`forgetting_attn_cached` (continuation from a KV cache that keeps each key's
cumulative gate: chunked prefill and decode). Input checks, one backend resolution, then ``naive.py``, ``torch.py``
or ``triton/`` (imported only when that backend runs)."""

from __future__ import annotations

import torch

from kernels.backend import resolve_backend
from kernels.forgetting_attn.naive import naive_forgetting_attn_cached
from kernels.forgetting_attn.torch import forgetting_attn_torch
from kernels.utils import without_autocast

__all__ = ["parallel_forgetting_attn", "forgetting_attn_cached"]


@without_autocast
def parallel_forgetting_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Forgetting attention (Lin et al. 2025, "Forgetting Transformer", arXiv 2503.02130): causal softmax attention
    whose logits add the log forget gates of the tokens between key and query.

    ``o_i = sum_{j <= i} softmax_j(scale q_i . k_j + sum_{j < t <= i} g_t) v_j``

    Args:
        q: queries ``[B, T, HQ, K]``.
        k: keys ``[B, T, H, K]`` (HQ a multiple of H: grouped queries).
        v: values ``[B, T, H, V]``.
        g: log forget gates ``[B, T, HQ]`` (``<= 0``, e.g. ``logsigmoid``); a zero gate is causal softmax attention.
        scale: logit scale; defaults to ``K ** -0.5``.
        window_size: attend only to the last ``window_size`` keys (j > i - window_size); None: all.
        cu_seqlens: ``[N + 1]`` offsets of sequences packed along T (B must be 1); none attends across.
        backend: ``"auto"`` | ``"triton"`` | ``"torch"`` | ``"naive"`` (``auto``: ``triton`` on CUDA tensors, else
            ``torch``; see ``kernels.backend``). The ``triton`` backend takes fp32 / bf16 / fp16, K and V <= 256.

    Returns:
        ``o [B, T, HQ, V]`` in the dtype of v (fla's op returns the output alone too).
    """
    B, T, HQ, _ = _check(q, k, v, window_size)
    if g is None or tuple(g.shape) != (B, T, HQ):
        got = None if g is None else tuple(g.shape)
        raise ValueError(f"g must be [B, T, HQ]={[B, T, HQ]} (log forget gates), got {got}")
    if cu_seqlens is not None:
        offsets = cu_seqlens.tolist()
        steps = zip(offsets, offsets[1:], strict=False)
        if B != 1 or offsets[0] != 0 or offsets[-1] != T or any(b < a for a, b in steps):
            raise ValueError(f"cu_seqlens must rise from 0 to T={T} with B=1, got {offsets} and B={B}")
    backend = resolve_backend(backend, q, k, v, g, family="forgetting_attn")
    if backend == "triton":
        from kernels.forgetting_attn.triton import parallel_forgetting_attn_triton

        return parallel_forgetting_attn_triton(q, k, v, g, scale, window_size, cu_seqlens)
    G = g.to(torch.promote_types(g.dtype, torch.float32)).cumsum(1)
    if cu_seqlens is None:
        return forgetting_attn_cached(q, k, v, G, G, scale, window_size, backend)
    parts = [
        forgetting_attn_cached(q[:, a:b], k[:, a:b], v[:, a:b], G[:, a:b], G[:, a:b], scale, window_size, backend)
        for a, b in zip(offsets, offsets[1:], strict=False)
        if b > a
    ]  # a sequence's own cumulative gates: the offset G[a-1] cancels in G_i - G_j
    return torch.cat(parts, dim=1)


@without_autocast
def forgetting_attn_cached(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gc_q: torch.Tensor,
    gc_k: torch.Tensor,
    scale: float | None = None,
    window_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The queries of the last T of S positions against every cached key: chunked prefill (T > 1) and decode
    (T = 1) from a KV cache that also keeps each key's cumulative log forget gate.

    Shapes: q ``[B, T, HQ, K]``; k ``[B, S, H, K]``, v ``[B, S, H, V]`` with S >= T (the cache, these T tokens
    included); gc_q ``[B, T, HQ]``, gc_k ``[B, S, HQ]``: one running sum of the gates from the sequence start, so
    ``gc_q_i - gc_k_j`` is the sum of the gates of tokens j+1 .. i (``gc_k = +inf`` marks a padding slot that no
    query sees). ``backend`` as :func:`parallel_forgetting_attn`. Returns ``o [B, T, HQ, V]``."""
    B, T, HQ, _ = _check(q, k, v, window_size, same_length=False)
    S = k.shape[1]
    if tuple(gc_q.shape) != (B, T, HQ) or tuple(gc_k.shape) != (B, S, HQ):
        raise ValueError(
            f"gc_q must be [B, T, HQ]={[B, T, HQ]} and gc_k [B, S, HQ]={[B, S, HQ]}, got "
            f"{tuple(gc_q.shape)} and {tuple(gc_k.shape)}"
        )
    resolved = resolve_backend(backend, q, k, v, gc_q, gc_k, family="forgetting_attn")
    if resolved == "triton":
        from kernels.forgetting_attn.triton import forgetting_attn_cached_triton

        return forgetting_attn_cached_triton(q, k, v, gc_q, gc_k, scale, window_size)
    fn = naive_forgetting_attn_cached if resolved == "naive" else forgetting_attn_torch
    return fn(q, k, v, gc_q, gc_k, scale, window_size)


def _check(q, k, v, window_size, same_length: bool = True) -> tuple[int, int, int, int]:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{name} must be a 4-D floating-point [B, T, heads, D] tensor, got {tuple(x.shape)}")
    B, T, HQ, K = q.shape
    S, H = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != K or tuple(v.shape[:3]) != (B, S, H):
        raise ValueError(
            f"k [B, S, H, K] and v [B, S, H, V] must match q [B, T, HQ, K]: got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if HQ % H:
        raise ValueError(f"the query heads ({HQ}) must be a multiple of the key/value heads ({H})")
    if (S != T) if same_length else (S < T):
        raise ValueError(f"k has {S} positions for {T} queries ({'the same' if same_length else 'at least'} needed)")
    if T < 1:
        raise ValueError("sequence length must be >= 1")
    if window_size is not None and (
        isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1
    ):
        raise ValueError(f"window_size must be a positive int or None, got {window_size!r}")
    return B, T, HQ, K
