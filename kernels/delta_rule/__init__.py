"""Delta rule (DeltaNet) and gated delta rule (Gated DeltaNet), fla-compatible conventions.

Recurrence per head (``S`` is K x V; ``g_t <= 0`` a scalar log decay, ``g = 0`` for the plain delta rule;
``beta_t`` in (0, 1) the write strength)::

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

Keys (and queries) should be L2-normalized by the caller (the mixer): the recurrence is only well
conditioned for ``||k_t|| <= 1``. This folder declares two families, ``delta_rule`` and ``gated_delta_rule``.
Public ops (in ``ops.py``, re-exported here on first access): :func:`chunk_delta_rule` /
:func:`chunk_gated_delta_rule` (training / prefill) and :func:`fused_recurrent_delta_rule` /
:func:`fused_recurrent_gated_delta_rule` (decode). Backends: ``naive`` (per-step loop, the oracle), ``torch``
(chunked WY/UT form / step loop) and ``triton`` (chunkwise forward + backward kernels and a fused recurrent
decode kernel, in ``kernels/delta_rule/triton/``, loaded on first use).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _delta_rule_inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    q, k, v, beta = x(B, T, H, K), x.unit(B, T, H, K), x(B, T, H, V), x.beta(B, T, H)
    return "chunk_delta_rule", {"q": q, "k": k, "v": v, "beta": beta}


def _gated_delta_rule_inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    q, k, v, g, beta = x(B, T, H, K), x.unit(B, T, H, K), x(B, T, H, V), x.log_decay(B, T, H), x.beta(B, T, H)
    return "chunk_gated_delta_rule", {"q": q, "k": k, "v": v, "g": g, "beta": beta}


FAMILIES = (
    Family(
        name="delta_rule",
        ops={
            "chunk_delta_rule": "kernels.delta_rule.ops:chunk_delta_rule",
            "fused_recurrent_delta_rule": "kernels.delta_rule.ops:fused_recurrent_delta_rule",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_delta_rule_inputs,
        fla="fla.ops.delta_rule:chunk_delta_rule",
    ),
    Family(
        name="gated_delta_rule",
        ops={
            "chunk_gated_delta_rule": "kernels.delta_rule.ops:chunk_gated_delta_rule",
            "fused_recurrent_gated_delta_rule": "kernels.delta_rule.ops:fused_recurrent_gated_delta_rule",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_gated_delta_rule_inputs,
        fla="fla.ops.gated_delta_rule:chunk_gated_delta_rule",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    **FAMILIES[1].ops,
    "naive_recurrent_delta_rule": "kernels.delta_rule.naive:naive_recurrent_delta_rule",
    "naive_recurrent_gated_delta_rule": "kernels.delta_rule.naive:naive_recurrent_gated_delta_rule",
    "chunk_delta_rule_torch": "kernels.delta_rule.torch:chunk_delta_rule_torch",
    "chunk_gated_delta_rule_torch": "kernels.delta_rule.torch:chunk_gated_delta_rule_torch",
    "fused_recurrent_delta_rule_torch": "kernels.delta_rule.torch:fused_recurrent_delta_rule_torch",
    "fused_recurrent_gated_delta_rule_torch": "kernels.delta_rule.torch:fused_recurrent_gated_delta_rule_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
