"""Simple gated linear attention: one scalar log decay per head and step, fla-compatible conventions.

Recurrence per head (``S`` is K x V)::

    S_t = exp(g_t) S_{t-1} + k_t^T v_t
    o_t = (scale * q_t) S_t

The gate is data-dependent ``g [B, T, H]`` (Mamba-2 / SSD, gated RetNet), a constant per-head
``g_gamma [H]`` (RetNet: ``log(1 - 2 ** (-5 - h))``), or absent (plain linear attention).

Public ops (in ``ops.py``, re-exported here on first access): :func:`chunk_simple_gla` (training / prefill)
and :func:`fused_recurrent_simple_gla` (decode). Backends: ``naive`` (per-step loop, the oracle), ``torch``
(chunked PyTorch / step loop) and ``triton`` (chunkwise forward + backward kernels and a fused recurrent
decode kernel, in ``kernels/simple_gla/triton/``, imported only when that backend runs).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    return "chunk_simple_gla", {"q": x(B, T, H, K), "k": x(B, T, H, K), "v": x(B, T, H, V), "g": x.log_decay(B, T, H)}


FAMILIES = (
    Family(
        name="simple_gla",
        ops={
            "chunk_simple_gla": "kernels.simple_gla.ops:chunk_simple_gla",
            "fused_recurrent_simple_gla": "kernels.simple_gla.ops:fused_recurrent_simple_gla",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla="fla.ops.simple_gla:chunk_simple_gla",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_recurrent_simple_gla": "kernels.simple_gla.naive:naive_recurrent_simple_gla",
    "chunk_simple_gla_torch": "kernels.simple_gla.torch:chunk_simple_gla_torch",
    "fused_recurrent_simple_gla_torch": "kernels.simple_gla.torch:fused_recurrent_simple_gla_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
