"""RWKV-5/6: per-channel decay with a bonus for the current token, fla-compatible conventions.

Recurrence per head (``S`` is K x V; exclusive: token t reads the state *before* it, plus itself
weighted by the bonus ``u``)::

    o_t = (scale * r_t) (S_{t-1} + diag(u) k_t^T v_t)
    S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t

RWKV-6 "Finch" has a data-dependent ``w``, RWKV-5 "Eagle" a static one (broadcast over T); RWKV itself
uses ``scale=1.0``. Public ops (in ``ops.py``, re-exported here on first access): :func:`chunk_rwkv6`
(training / prefill) and :func:`fused_recurrent_rwkv6` (decode). Backends: ``naive`` (per-step loop, the
oracle), ``torch`` (chunked PyTorch / step loop) and ``triton`` (chunkwise forward + backward kernels and a
fused recurrent decode kernel, in ``kernels/rwkv6/triton/``, imported only when that backend runs).
"""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    r, k, v, w = x(B, T, H, K), x(B, T, H, K), x(B, T, H, V), x.log_decay(B, T, H, K)
    return "chunk_rwkv6", {"r": r, "k": k, "v": v, "w": w, "u": x(H, K)}


FAMILIES = (
    Family(
        name="rwkv6",
        ops={
            "chunk_rwkv6": "kernels.rwkv6.ops:chunk_rwkv6",
            "fused_recurrent_rwkv6": "kernels.rwkv6.ops:fused_recurrent_rwkv6",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla="fla.ops.rwkv6:chunk_rwkv6",
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_recurrent_rwkv6": "kernels.rwkv6.naive:naive_recurrent_rwkv6",
    "chunk_rwkv6_torch": "kernels.rwkv6.torch:chunk_rwkv6_torch",
    "fused_recurrent_rwkv6_torch": "kernels.rwkv6.torch:fused_recurrent_rwkv6_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
