"""Kernel library: linear-attention recurrences with fla-compatible conventions.

Layout ``[B, T, H, D]``, states ``[B, H, K, V]``, log-space gates (``g <= 0``), ``scale = K ** -0.5``
by default; every op returns ``(o, final_state)``. Each family lives in ``kernels/<family>/`` with a
``naive`` oracle, a chunked ``torch`` implementation and ``triton`` kernels, chosen by
``backend="auto" | "triton" | "torch" | "naive"`` through :func:`resolve_backend`, and declares itself
(its ops, backends and test inputs) in its ``__init__.py``; see :mod:`kernels.registry`.

Importing this package is cheap and never imports Triton or needs CUDA: it reads the families'
declarations only, the op names below are resolved on first use (PEP 562 module ``__getattr__``), and
Triton loads only inside the Triton backend.
"""

from __future__ import annotations

from kernels import registry
from kernels.backend import BACKENDS, resolve_backend

__all__ = ["BACKENDS", "resolve_backend", *registry.ops()]
__getattr__, __dir__ = registry.lazy_exports(__name__, registry.ops())
