"""Kernel family registry: each family declares itself in its own package; nothing else lists the families.

A family is one recurrence with its public ops (``chunk_<family>`` / ``fused_recurrent_<family>``) and the
implementations behind them. Its package ``kernels/<folder>/__init__.py`` holds a module-level
``FAMILIES = (Family(...), ...)`` (one folder may declare several, e.g. ``delta_rule`` and
``gated_delta_rule``). :func:`families` imports every sub-package of ``kernels`` (``pkgutil``) and collects
those declarations; a sub-package without ``FAMILIES`` (shared helpers) is skipped. Declarations name their
ops by import string (``"kernels.gla.ops:chunk_gla"``), so discovery only loads the small ``__init__``
modules: a family's torch code loads when one of its ops is first used, Triton only inside the Triton
backend. ``kernels.<op>``, ``kernels.backend.AVAILABLE``, ``scripts/bench_kernels.py`` and the tests all
read from here.

Adding a kernel family
----------------------
Create a folder ``kernels/<name>/`` with

- ``naive.py`` (the per-step loop, the oracle), ``torch.py`` (chunked PyTorch) and, optionally, ``triton/``;
- ``ops.py``: the public ops, each checking its inputs and calling
  ``resolve_backend(backend, *tensors, family="<name>")`` once to pick the implementation;
- ``__init__.py``: a docstring and ``FAMILIES = (Family(name=..., ops=..., backends=..., make_inputs=...,
  fla=...),)``: the op names with their import strings, the implementations that exist (at least
  ``naive`` and ``torch``), a factory of random fla-compatible inputs for the chunk op (built with
  :class:`Sampler`) and fla's equivalent op, if any. Add
  ``__getattr__, __dir__ = lazy_exports(__name__, {...})`` to keep ``from kernels.<name> import op`` working
  without importing the ops eagerly;
- tests in ``tests/kernels/`` against the naive oracle.

Nothing else needs an edit: ``kernels.<op>``, the backend table, ``tests/kernels/test_registry.py``, the fla
cross-check and the benchmark pick the family up by themselves.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F

__all__ = ["IMPLEMENTATIONS", "Family", "Sampler", "families", "family", "ops", "op", "resolve", "lazy_exports"]

IMPLEMENTATIONS: tuple[str, ...] = ("triton", "torch", "naive")
"""Implementations a family can declare (``kernels.backend.BACKENDS`` without ``auto``)."""

Target = str | Callable
"""An object, or its import string ``"package.module:attr"``."""


@dataclass(frozen=True)
class Family:
    """One kernel family's declaration.

    Attributes:
        name: the family name passed to ``resolve_backend(..., family=name)``, e.g. ``"gla"``.
        ops: public op name -> the op (or its import string), e.g. ``{"chunk_gla": "kernels.gla.ops:chunk_gla"}``.
        backends: the implementations that exist, a subset of :data:`IMPLEMENTATIONS` with ``naive`` and ``torch``.
        make_inputs: ``make_inputs(B, T, H, K, V, device, dtype, generator) -> (op, kwargs)``: random
            fla-compatible tensors for one call of the family's chunk op (an op name or the op itself);
            q/k/v-like tensors in ``dtype``, gates and betas in fp32 (fp64 for fp64), as the mixers pass them.
        fla: import string of flash-linear-attention's op equivalent to the chunk op (same arguments), or None.
        stateful: the ops carry a recurrent state (``initial_state``, ``output_final_state``, ``(o, state)``
            returns); False for attention-like families whose ops return ``o`` alone (forgetting attention).
    """

    name: str
    ops: Mapping[str, Target]
    backends: frozenset[str]
    make_inputs: Callable[..., tuple[Target, dict[str, torch.Tensor]]] = field(repr=False)
    fla: str | None = None
    stateful: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", frozenset(self.backends))
        object.__setattr__(self, "ops", MappingProxyType(dict(self.ops)))
        if not self.backends <= set(IMPLEMENTATIONS) or not {"naive", "torch"} <= self.backends:
            raise ValueError(
                f"family {self.name!r} declares backends {sorted(self.backends)}: they must be among "
                f"{list(IMPLEMENTATIONS)} and include 'naive' and 'torch'"
            )

    def op(self, name: str) -> Callable:
        """The op ``name`` of this family, imported on first use."""
        return resolve(self.ops[name])

    def inputs(
        self,
        B: int,
        T: int,
        H: int,
        K: int,
        V: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
        initial_state: bool = False,
    ) -> tuple[Callable, dict[str, torch.Tensor]]:
        """``(op, kwargs)`` for one call of the chunk op on random inputs (seed 0 unless ``generator``).

        ``initial_state=True`` adds a random ``[B, H, K, V]`` state in fp32 (fp64 for fp64).
        """
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        op, kwargs = self.make_inputs(B, T, H, K, V, device, dtype, generator)
        if initial_state:
            kwargs["initial_state"] = Sampler(device, dtype, generator).state(B, H, K, V)
        return (self.op(op) if isinstance(op, str) else op), kwargs


class Sampler:
    """Random tensors for a family's ``make_inputs``: drawn from ``generator`` on its own device (the same
    numbers on every ``device``), then moved to ``device``."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype, generator: torch.Generator) -> None:
        self.device, self.dtype, self.generator = device, dtype, generator
        self.gate_dtype = torch.promote_types(dtype, torch.float32)

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=torch.float32)

    def __call__(self, *shape: int) -> torch.Tensor:
        """Standard normal in ``dtype`` (queries, keys, values, RWKV's bonus)."""
        return self._randn(shape).to(self.device, self.dtype)

    def unit(self, *shape: int) -> torch.Tensor:
        """L2-normalized along the last dim, in ``dtype`` (the delta rules' keys)."""
        return F.normalize(self._randn(shape), dim=-1).to(self.device, self.dtype)

    def log_decay(self, *shape: int) -> torch.Tensor:
        """Log-space decay ``logsigmoid(4x) / 4 <= 0`` in fp32: factors ``exp(g)`` from ~1 down to strong decay."""
        return (F.logsigmoid(4 * self._randn(shape)) / 4).to(self.device, self.gate_dtype)

    def beta(self, *shape: int) -> torch.Tensor:
        """Write strengths ``sigmoid(x)`` in (0, 1), fp32."""
        return torch.sigmoid(self._randn(shape)).to(self.device, self.gate_dtype)

    def state(self, *shape: int) -> torch.Tensor:
        """A recurrent state, fp32."""
        return self._randn(shape).to(self.device, self.gate_dtype)


def resolve(target: Target) -> Callable:
    """The object behind an import string ``"package.module:attr"`` (imported now); a callable as is."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def families() -> Mapping[str, Family]:
    """Every declared family by name: the ``FAMILIES`` of each sub-package of ``kernels``, in folder order."""
    found: dict[str, Family] = {}
    seen_ops: dict[str, str] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.ispkg:
            continue
        for fam in getattr(importlib.import_module(f"{__package__}.{info.name}"), "FAMILIES", ()):
            if fam.name in found:
                raise RuntimeError(f"kernel family {fam.name!r} is declared twice (second in kernels.{info.name})")
            for name in fam.ops:
                if name in seen_ops:
                    raise RuntimeError(f"op {name!r} is declared by both {seen_ops[name]!r} and {fam.name!r}")
                seen_ops[name] = fam.name
            found[fam.name] = fam
    return MappingProxyType(found)


def family(name: str) -> Family:
    """The declaration of family ``name``; ValueError for an unknown one."""
    if name not in families():
        raise ValueError(f"unknown kernel family {name!r}; known families: {sorted(families())}")
    return families()[name]


def ops() -> dict[str, Target]:
    """Every registered public op name -> its declared target, over all families."""
    return {name: target for fam in families().values() for name, target in fam.ops.items()}


def op(name: str) -> Callable:
    """The registered op ``name`` (imported on first use); KeyError if no family declares it."""
    return resolve(ops()[name])


def lazy_exports(module: str, exports: Mapping[str, Target]) -> tuple[Callable, Callable]:
    """PEP 562 ``(__getattr__, __dir__)`` for ``module`` that import ``exports`` (name -> target) on access.

    ``__dir__`` lists the exported names and the module's ``__all__``; any other missing name raises
    AttributeError.
    """

    def __getattr__(name: str):
        if name in exports:
            return resolve(exports[name])
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*exports, *getattr(sys.modules[module], "__all__", ())})

    return __getattr__, __dir__
