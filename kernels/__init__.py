"""Kernel library: linear-attention recurrences with fla-compatible conventions.

Layout ``[B, T, H, D]``, states ``[B, H, K, V]``, log-space gates (``g <= 0``), ``scale = K ** -0.5``
by default; every op returns ``(o, final_state)``. Each family lives in ``kernels/<family>/`` with a
``naive`` oracle, a chunked ``torch`` implementation and ``triton`` kernels, chosen by
``backend="auto" | "triton" | "torch" | "naive"`` through :func:`resolve_backend`.

Importing this package is cheap and never imports Triton or needs CUDA: the op names below are
resolved on first use (PEP 562 module ``__getattr__``), and Triton loads only inside the Triton backend.
"""

from __future__ import annotations

import importlib

from kernels.backend import BACKENDS, resolve_backend

# public op -> the family package that defines it
_OPS = {
    "chunk_gla": "kernels.gla",
    "fused_recurrent_gla": "kernels.gla",
    "chunk_simple_gla": "kernels.simple_gla",
    "fused_recurrent_simple_gla": "kernels.simple_gla",
    "chunk_rwkv6": "kernels.rwkv6",
    "fused_recurrent_rwkv6": "kernels.rwkv6",
    "chunk_delta_rule": "kernels.delta_rule",
    "fused_recurrent_delta_rule": "kernels.delta_rule",
    "chunk_gated_delta_rule": "kernels.delta_rule",
    "fused_recurrent_gated_delta_rule": "kernels.delta_rule",
}

__all__ = ["BACKENDS", "resolve_backend", *_OPS]


def __getattr__(name: str):
    if name in _OPS:
        return getattr(importlib.import_module(_OPS[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
