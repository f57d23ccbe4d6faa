"""Backend resolution for the kernel families: the one place that decides which implementation runs.

Every public op takes ``backend="auto" | "triton" | "torch" | "naive"`` and calls
:func:`resolve_backend` once. ``auto`` picks ``triton`` for CUDA tensors when the family has a
Triton implementation and ``torch`` (chunked PyTorch, the portable path) otherwise. An explicit
request that cannot be served raises with the fix; nothing falls back silently.

Which implementations exist for a family comes from the family's own declaration (``backends`` of its
``Family`` in ``kernels/<folder>/__init__.py``, see :mod:`kernels.registry`); ``AVAILABLE`` is derived
from those declarations once, at import.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from kernels import registry

__all__ = ["BACKENDS", "AVAILABLE", "resolve_backend", "available_backends", "check_triton"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("auto", *registry.IMPLEMENTATIONS)
"""Valid values of every op's ``backend`` argument: ``("auto", "triton", "torch", "naive")``."""

AVAILABLE: dict[str, set[str]] = {name: set(fam.backends) for name, fam in registry.families().items()}
"""Family name -> implementations that exist for it (a subset of ``BACKENDS`` without ``auto``), derived
from the registry; tests may patch an entry to simulate a family without Triton kernels."""

_LOGGED: set[tuple[str, str, str, str]] = set()


def available_backends(family: str) -> list[str]:
    """Sorted implementations that exist for ``family``; ValueError for an unknown family."""
    if family not in AVAILABLE:
        raise ValueError(f"unknown kernel family {family!r}; known families: {sorted(AVAILABLE)}")
    return sorted(AVAILABLE[family])


def resolve_backend(requested: str, *tensors: torch.Tensor | None, family: str) -> str:
    """Turn a requested backend into the concrete implementation to run for ``family``.

    Args:
        requested: one of ``BACKENDS`` (``"auto"``, ``"triton"``, ``"torch"``, ``"naive"``).
        *tensors: the op's input tensors (``None`` entries, e.g. a missing initial state, are ignored);
            ``auto`` looks at whether any of them lives on CUDA.
        family: kernel family name, e.g. ``"gla"`` (keyword-only).

    Returns:
        ``"triton"``, ``"torch"`` or ``"naive"``.

    Raises:
        ValueError: unknown backend or family.
        RuntimeError: ``"triton"`` requested for a family that has no Triton implementation yet, or
            resolved where Triton cannot run (see :func:`check_triton`).
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; valid backends: {list(BACKENDS)}")
    have = set(available_backends(family))
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    if requested == "auto":
        resolved = "triton" if on_cuda and "triton" in have else "torch"
    elif requested not in have:
        portable = ", ".join(f"'{b}'" for b in sorted(have))
        raise RuntimeError(
            f"backend={requested!r} is not available for the {family} family yet: use one of {portable} "
            "('torch' is the chunked PyTorch implementation, 'naive' the per-step reference loop)"
        )
    else:
        resolved = requested
    if resolved == "triton":
        check_triton(*tensors)
    key = (family, requested, resolved, "cuda" if on_cuda else "cpu")
    # Logged at the first call outside a torch.compile trace: inside one, dynamo cannot trace a logger call and
    # breaks the graph there, and the graph compiled with those breaks (8 pieces for an RWKV-7 block) is what the
    # first training step runs and what the compile cache keeps
    if key not in _LOGGED and not torch.compiler.is_compiling():
        _LOGGED.add(key)
        logger.info("kernels.%s: backend=%r resolved to %r (%s tensors)", family, requested, resolved, key[3])
    return resolved


def check_triton(*tensors: torch.Tensor | None) -> None:
    """Raise a RuntimeError with the fix unless the Triton kernels can run on ``tensors``.

    Triton must be importable, and the tensors must live on CUDA, unless ``TRITON_INTERPRET=1`` is set
    (Triton's interpreter runs the same kernels on CPU tensors, slowly: it is how the tests run without
    a GPU; set it before the first Triton kernel is used). Never imports Triton itself.
    """
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError(
            "backend='triton' needs the triton package, which is not installed: pip install triton "
            "(or use backend='torch')"
        )
    given = [t for t in tensors if t is not None]
    if any(not t.is_cuda for t in given) and os.environ.get("TRITON_INTERPRET") != "1":
        devices = sorted({str(t.device) for t in given})
        raise RuntimeError(
            f"backend='triton' runs on CUDA tensors, got tensors on {devices}: move them to a GPU, "
            "or set TRITON_INTERPRET=1 to run the Triton kernels on CPU (slow; for tests), "
            "or use backend='torch'"
        )
