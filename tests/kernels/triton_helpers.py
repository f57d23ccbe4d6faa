"""Helpers shared by the Triton kernel tests (``tests/kernels/test_triton_*.py``).

The tests run on CPU through Triton's interpreter (the ``triton_interpreter`` fixture of ``conftest.py``) and
unchanged on a GPU: inputs are created on ``DEVICE``. Results are ``(o, S, grads)`` for the recurrent families,
``(o, grads)`` for attention: the output, the final state and a dict of input gradients by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

GPU_ONLY = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: compiled kernels at realistic sizes"
)
"""Marks a test of the compiled kernels at realistic sizes (too slow for the interpreter)."""

ROOT = Path(__file__).resolve().parents[2]


def fp64_copies(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh fp64 leaves with gradients, of the same (rounded) values: the oracle's inputs."""
    return {n: t.detach().double().requires_grad_(True) for n, t in x.items()}


def run_with_grads(
    fn: Callable,
    x: dict[str, torch.Tensor],
    args: Callable[[dict], tuple],
    names: Sequence[str],
    seed: int = 1,
    final_state_grad: bool = True,
    **kwargs,
) -> tuple:
    """``fn(*args(x), initial_state=x["h0"], output_final_state=True, **kwargs)``, then the backward of a random
    linear loss on o (and the final state): o, S and the gradients of the inputs ``names``."""
    o, S = fn(*args(x), initial_state=x["h0"], output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=gen).to(DEVICE, o.dtype)
    dS = torch.randn(S.shape, generator=gen).to(DEVICE, S.dtype)
    ((o * do).sum() + ((S * dS).sum() if final_state_grad else 0)).backward()
    return o, S, {n: x[n].grad for n in names}


def check_grads(grads: dict, grads_ref: dict, tol: dict, names: Sequence[str] | None = None) -> None:
    """Each gradient of ``names`` (default: all of ``grads``) is present, finite and within ``tol``."""
    for name in grads if names is None else names:
        grad = grads[name]
        assert grad is not None and bool(grad.isfinite().all()), f"d{name} missing or not finite"
        assert_close(grad.float(), grads_ref[name], **tol, name=f"d{name}")


def check(actual: tuple, expected: tuple, tol: dict, names: Sequence[str] | None = None) -> None:
    """``(o, S, grads)`` or ``(o, grads)`` against the reference: o (and the final state) and the gradients of
    ``names`` (default: all) within ``tol``."""
    *outs, grads = actual
    *outs_ref, grads_ref = expected
    for name, a, ref in zip(("o", "final_state")[: len(outs)], outs, outs_ref, strict=True):
        assert_close(a.float(), ref, **tol, name=name)
    check_grads(grads, grads_ref, tol, names)


def check_low_precision(actual: tuple, expected: tuple, dtype: torch.dtype) -> None:
    """bf16 / fp16 inputs against the oracle on the same rounded values: o in ``dtype`` and the final state in
    fp32 within 5e-2; gradients in ``dtype``, within 5e-2 relative with an absolute floor of 2e-2 of the largest
    reference entry."""
    (o, S, grads), (o_ref, S_ref, grads_ref) = actual, expected
    assert o.dtype == dtype and S.dtype == torch.float32
    loose = {"rtol": 5e-2, "atol": 5e-2}
    assert_close(o.float(), o_ref, **loose, name="o")
    assert_close(S, S_ref, **loose, name="final_state")
    for name, grad in grads.items():
        assert grad.dtype == dtype, f"d{name} has dtype {grad.dtype}"
        scale = grads_ref[name].abs().max().item()
        assert_close(grad.float(), grads_ref[name], rtol=5e-2, atol=2e-2 * scale, name=f"d{name}")


def check_relative(actual: tuple, expected: tuple, rel: float, prefix: str = "") -> None:
    """``(o, S, grads)`` or ``(o, grads)`` finite and within ``rel``, the absolute floor ``rel`` times the largest
    reference entry (the realistic-size tests on a GPU). ``prefix`` starts each name in a failure message."""
    *outs, grads = actual
    *outs_ref, grads_ref = expected
    pairs = {n: (a, ref) for n, a, ref in zip(("o", "final_state")[: len(outs)], outs, outs_ref, strict=True)}
    pairs |= {f"d{n}": (grads[n], grads_ref[n]) for n in grads}
    for name, (a, ref) in pairs.items():
        assert bool(a.isfinite().all()), f"{prefix}{name} not finite"
        assert_close(a.float(), ref, rtol=rel, atol=rel * ref.abs().max().item(), name=f"{prefix}{name}")


def run_without_interpreter(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python *args`` in a fresh process at the repository root, without ``TRITON_INTERPRET`` (and with the
    environment variables ``env`` set)."""
    base = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], env=base | env, text=True, capture_output=True, cwd=ROOT)


def assert_compiles_for_sm90(module: str) -> None:
    """``python -m <module>`` (a family's ``compile_check``) compiles every kernel for sm_90 without failures."""
    done = run_without_interpreter("-m", module)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "0 failures" in done.stdout


def prefill_then_decode(chunk: Callable, fused: Callable, args: Callable[[dict], tuple], x: dict, T1: int) -> tuple:
    """The Triton ``chunk`` op's output on all of ``x`` (no initial state), and the same tokens served as a
    prefill of the first ``T1`` by ``chunk`` followed by one ``fused`` decode step per token, carrying the state:
    ``(o_parallel, o_prefill_then_decode)``."""
    o_full, _ = chunk(*args(x), backend="triton", chunk_size=16)
    first = {n: t if n == "h0" else t[:, :T1] for n, t in x.items()}
    o, S = chunk(*args(first), output_final_state=True, backend="triton", chunk_size=16)
    outs = [o]
    with torch.no_grad():
        for t in range(T1, x["q"].shape[1]):
            step = {n: v if n == "h0" else v[:, t : t + 1] for n, v in x.items()}
            o_t, S = fused(*args(step), initial_state=S, output_final_state=True, backend="triton")
            outs.append(o_t)
    return o_full, torch.cat(outs, dim=1)
