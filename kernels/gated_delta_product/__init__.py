"""Gated DeltaProduct (Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs via Householder
Products", arXiv 2502.10297), fla-compatible conventions.

Per token t and head (``S`` is K x V, ``n`` = ``num_householder`` delta steps per token)::

    S <- exp(g_t) S
    S <- S + beta_{t,j} k_{t,j} (v_{t,j} - S^T k_{t,j})^T        for j = 1..n
    o_t = S^T (scale * q_t)

The transition is a product of n generalized Householder matrices ``I - beta k k^T``: with n = 1 it is the gated
delta rule, with n >= 2 a rank-n update that can represent rotations (and, with beta in (0, 2), reflections),
which is what tracking a permutation group's state needs. Layout (fla's): q ``[B, T, H, K]``; k
``[B, T*n, H, K]``, v ``[B, T*n, H, V]``, beta ``[B, T*n, H]`` (token t's j-th step at ``t*n + j``); g
``[B, T, H]`` or None. Public ops (``ops.py``): :func:`chunk_gated_delta_product` (training / prefill) and
:func:`fused_recurrent_gated_delta_product` (decode). Backends: ``naive`` (the per-step loop, the oracle), and
``torch`` / ``triton``: the gated delta rule's kernels on the interleaved sequence (see ``ops.py``).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports

NUM_HOUSEHOLDER = 2  # the registry's random inputs: two steps per token


def _inputs(B, T, H, K, V, device, dtype, generator):
    x, n = Sampler(device, dtype, generator), NUM_HOUSEHOLDER
    q, k, v = x(B, T, H, K), x.unit(B, T * n, H, K), x(B, T * n, H, V)
    g, beta = x.log_decay(B, T, H), x.beta(B, T * n, H)
    return "chunk_gated_delta_product", {"q": q, "k": k, "v": v, "g": g, "beta": beta}


_OPS = "kernels.gated_delta_product.ops:"
FAMILIES = (
    Family(
        name="gated_delta_product",
        ops={
            "chunk_gated_delta_product": _OPS + "chunk_gated_delta_product",
            "fused_recurrent_gated_delta_product": _OPS + "fused_recurrent_gated_delta_product",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla=_OPS + "fla_chunk_gated_delta_product",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_recurrent_gated_delta_product": "kernels.gated_delta_product.naive:naive_recurrent_gated_delta_product",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
