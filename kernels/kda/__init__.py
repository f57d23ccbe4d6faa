"""Kimi Delta Attention (KDA; Kimi Team 2025, "Kimi Linear", arXiv 2510.26692), fla-compatible conventions.

The gated delta rule with a decay per key channel instead of one per head (``S`` is K x V, ``g_t`` a K-vector of
log decays <= 0)::

    S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

The decay comes first, then the delta step (the two do not commute once the decay differs per channel). With a
decay constant over K it is the gated delta rule. Layout (fla's): q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g
``[B, T, H, K]``, beta ``[B, T, H]``, states ``[B, H, K, V]``. Public ops (``ops.py``): :func:`chunk_kda`
(training / prefill) and :func:`fused_recurrent_kda` (decode). Backends: ``naive`` (the per-step loop, the
oracle), ``torch`` (chunked WY/UT form with a per-channel decay / step loop; README.md) and ``triton`` (chunked
forward and backward kernels and a decode kernel, ``triton/``; ``auto`` picks it for CUDA tensors).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    q, k, v, g, beta = x(B, T, H, K), x.unit(B, T, H, K), x(B, T, H, V), x.log_decay(B, T, H, K), x.beta(B, T, H)
    return "chunk_kda", {"q": q, "k": k, "v": v, "g": g, "beta": beta}


FAMILIES = (
    Family(
        name="kda",
        ops={"chunk_kda": "kernels.kda.ops:chunk_kda", "fused_recurrent_kda": "kernels.kda.ops:fused_recurrent_kda"},
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla="fla.ops.kda:chunk_kda",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_recurrent_kda": "kernels.kda.naive:naive_recurrent_kda",
    "chunk_kda_torch": "kernels.kda.torch:chunk_kda_torch",
    "fused_recurrent_kda_torch": "kernels.kda.torch:fused_recurrent_kda_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
