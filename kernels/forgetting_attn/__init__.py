"""Forgetting attention (FoX; Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a Forget Gate",
arXiv 2503.02130), fla's conventions.

Causal softmax attention whose logits add the log forget gates ``g_t <= 0`` of the tokens between key and query::

    o_i = sum_{j <= i} softmax_j(scale q_i . k_j + G_i - G_j) v_j,      G_i = g_1 + ... + g_i

A zero gate is causal softmax attention; a gate near -inf forgets everything before the token. Layout: q
``[B, T, HQ, K]``, k ``[B, T, H, K]``, v ``[B, T, H, V]`` (grouped queries when HQ > H), g ``[B, T, HQ]``. Not a
recurrence: the cache is a KV cache that also keeps each key's cumulative gate, so the ops return ``o`` alone.
Public ops (``ops.py``): :func:`parallel_forgetting_attn` (fla's name; training, prefill, packed sequences, a
window) and :func:`forgetting_attn_cached` (continuation from such a cache: chunked prefill and decode). Backends:
``naive`` (the whole masked score matrix, the oracle), ``torch`` (PyTorch's SDPA per block of queries with the
gates as an additive mask) and ``triton`` (flash-attention forward and backward kernels with the gates in the
logits, ``triton/``); ``auto`` is ``triton`` on CUDA tensors, ``torch`` elsewhere.
"""

from __future__ import annotations

import torch.nn.functional as F

from kernels.registry import Family, Sampler, lazy_exports


def _inputs(B, T, H, K, V, device, dtype, generator):
    x = Sampler(device, dtype, generator)
    g = (F.logsigmoid(4 + x(B, T, H).float())).to(x.gate_dtype)  # gates near 0 (forgetting slowly), as trained FoX's
    return "parallel_forgetting_attn", {"q": x(B, T, H, K), "k": x(B, T, H, K), "v": x(B, T, H, V), "g": g}


FAMILIES = (
    Family(
        name="forgetting_attn",
        ops={
            "parallel_forgetting_attn": "kernels.forgetting_attn.ops:parallel_forgetting_attn",
            "forgetting_attn_cached": "kernels.forgetting_attn.ops:forgetting_attn_cached",
        },
        backends={"naive", "torch", "triton"},
        make_inputs=_inputs,
        fla="fla.ops.forgetting_attn:parallel_forgetting_attn",
        stateful=False,
    ),
)

_EXPORTS = {
    **FAMILIES[0].ops,
    "naive_forgetting_attn": "kernels.forgetting_attn.naive:naive_forgetting_attn",
    "forgetting_attn_torch": "kernels.forgetting_attn.torch:forgetting_attn_torch",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
