"""Gated linear attention (GLA): per-channel data-dependent decay, fla-compatible conventions.

Recurrence per head (``S`` is K x V)::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t
    o_t = (scale * q_t) S_t

Public ops (in ``ops.py``, re-exported here on first access): :func:`chunk_gla` (training / prefill) and
:func:`fused_recurrent_gla` (decode). Backends: ``naive`` (per-step loop, the oracle), ``torch`` (chunked
PyTorch / step loop) and ``triton`` (chunkwise forward + backward kernels and a fused recurrent decode
kernel, in ``kernels/gla/triton/``, imported only when that backend runs).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    return "chunk_gla", {"q": x(B, T, H, K), "k": x(B, T, H, K), "v": x(B, T, H, V), "g": x.log_decay(B, T, H, K)}


FAMILIES = (
    Family(
        name="gla",
        ops={"chunk_gla": "kernels.gla.ops:chunk_gla", "fused_recurrent_gla": "kernels.gla.ops:fused_recurrent_gla"},
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla="fla.ops.gla:chunk_gla",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_recurrent_gla": "kernels.gla.naive:naive_recurrent_gla",
    "chunk_gla_torch": "kernels.gla.torch:chunk_gla_torch",
    "fused_recurrent_gla_torch": "kernels.gla.torch:fused_recurrent_gla_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
