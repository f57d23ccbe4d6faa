"""The generalized (diagonal plus low-rank, DPLR) delta rule, fla-compatible conventions (fla's
``chunk_dplr_delta_rule``). Per head, with ``S`` a K x V state::

    S_t = (Diag(exp(gk_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T
    o_t = S_t^T (scale * q_t)

A diagonal decay per key channel plus a rank-one term that reads the state before the decay. The delta rules are
special cases (``a = -beta k``, ``b = k``); RWKV-7 runs on it (``kernels.rwkv7``). Layout: q, k, a, b, gk
``[B, T, H, K]``, v ``[B, T, H, V]``, states ``[B, H, K, V]``. Public ops (``ops.py``): :func:`chunk_dplr_delta_rule`
(training / prefill) and :func:`fused_recurrent_dplr_delta_rule` (decode). Backends: ``naive`` (the per-step
loop, the oracle), ``torch`` (the WY/UT form extended to a diagonal decay; README.md) and ``triton`` (the same form
in Triton kernels with their backward, and a fused decode kernel; ``triton/README.md``).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    kk = x.unit(B, T, H, K)
    a_gate = x.beta(B, T, H, K).to(dtype)  # RWKV-7's in-context learning rate, (0, 1) per channel
    kwargs = {"q": x(B, T, H, K), "k": x(B, T, H, K), "v": x(B, T, H, V), "a": -kk, "b": kk * a_gate}
    return "chunk_dplr_delta_rule", kwargs | {"gk": x.log_decay(B, T, H, K)}


FAMILIES = (
    Family(
        name="dplr_delta_rule",
        ops={
            "chunk_dplr_delta_rule": "kernels.dplr_delta_rule.ops:chunk_dplr_delta_rule",
            "fused_recurrent_dplr_delta_rule": "kernels.dplr_delta_rule.ops:fused_recurrent_dplr_delta_rule",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla="fla.ops.generalized_delta_rule:chunk_dplr_delta_rule",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_recurrent_dplr_delta_rule": "kernels.dplr_delta_rule.naive:naive_recurrent_dplr_delta_rule",
    "chunk_dplr_delta_rule_torch": "kernels.dplr_delta_rule.torch:chunk_dplr_delta_rule_torch",
    "fused_recurrent_dplr_delta_rule_torch": "kernels.dplr_delta_rule.torch:fused_recurrent_dplr_delta_rule_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
