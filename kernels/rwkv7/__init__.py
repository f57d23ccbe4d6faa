"""RWKV-7 "Goose" time mix (Peng et al. 2025, arXiv 2503.14456): the DPLR delta rule under RWKV's names, fla's
conventions (``w`` the log decay, the layer passing ``a = -kk`` and ``b = kk * a_gate``, no query scale). Public
ops (``ops.py``): :func:`chunk_rwkv7` (training / prefill) and :func:`fused_recurrent_rwkv7` (decode); backends
are ``kernels.dplr_delta_rule``'s (naive, torch, triton): the ops resolve ``backend`` as that family."""

from __future__ import annotations

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    kk = x.unit(B, T, H, K)
    a_gate = x.beta(B, T, H, K).to(dtype)
    kwargs = {"r": x(B, T, H, K), "w": x.log_decay(B, T, H, K), "k": x(B, T, H, K), "v": x(B, T, H, V)}
    return "chunk_rwkv7", kwargs | {"a": -kk, "b": kk * a_gate}


FAMILIES = (
    Family(
        name="rwkv7",
        ops={
            "chunk_rwkv7": "kernels.rwkv7.ops:chunk_rwkv7",
            "fused_recurrent_rwkv7": "kernels.rwkv7.ops:fused_recurrent_rwkv7",
        },
        backends={"naive", "torch", "triton"},  # kernels.dplr_delta_rule's
        make_inputs=_inputs,
        fla="fla.ops.rwkv7:chunk_rwkv7",
    ),
)

_EXPORTS = dict(FAMILIES[0].ops)
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
