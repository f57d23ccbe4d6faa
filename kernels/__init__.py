"""Kernel library: linear-attention recurrences with fla-compatible conventions.

Layout ``[B, T, H, D]``, states ``[B, H, K, V]``, log-space gates (``g <= 0``), ``scale = K ** -0.5``
by default; every op returns ``(o, final_state)``. Each family lives in ``kernels/<family>/`` with a
``naive`` oracle, a chunked ``torch`` implementation and (where it exists) ``triton`` kernels, chosen
by ``backend="auto" | "triton" | "torch" | "naive"`` through :func:`resolve_backend`.

Importing this package is cheap and never imports Triton or needs CUDA.
"""

from __future__ import annotations

from kernels.backend import BACKENDS, resolve_backend
from kernels.gla import chunk_gla, fused_recurrent_gla

__all__ = ["BACKENDS", "resolve_backend", "chunk_gla", "fused_recurrent_gla"]
