"""Our Triton kernels against flash-linear-attention's (fla) on a GPU: same conventions, same numbers.

docs/architecture.md promises fla-compatible signatures and semantics (layout, log-space gates, default scale, the
RWKV bonus, the delta-rule beta). The oracle tests pin our kernels to the per-step loop; this module pins
the *conventions* to the library people port from: every family is called with the same arguments on
both sides and outputs, final states and all input gradients must agree. Needs CUDA and `fla`
(``pip install fla-core``); elsewhere the module is skipped with that reason.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kernels import registry

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: fla does not run in the interpreter"),
    pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="needs fla: pip install fla-core"),
]

B, T, H, K, V = 2, 300, 4, 64, 64  # T not a multiple of any chunk size


def run(fn, x: dict[str, torch.Tensor], backward: bool = True, stateful: bool = True, **kw):
    """Outputs (and gradients) of one call; a stateless family's ops (forgetting attention) return `o` alone."""
    leaves = {n: t.detach().clone().requires_grad_(backward) for n, t in x.items()}
    if stateful:
        o, s = fn(**leaves, scale=K**-0.5, output_final_state=True, **kw)
        outs = {"o": o, "final_state": s}
    else:
        outs = {"o": fn(**leaves, scale=K**-0.5, **kw)}
    if not backward:
        return outs
    gen = torch.Generator().manual_seed(1)
    loss = sum((t.float() * torch.randn(t.shape, generator=gen).cuda()).sum() for t in outs.values())
    loss.backward()
    return outs | {f"d{n}": t.grad for n, t in leaves.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


# the families that have both sides to compare: a Triton backend of ours and an fla op they declare
COMPARED = [name for name, fam in registry.families().items() if fam.fla is not None and "triton" in fam.backends]


@pytest.mark.parametrize("family", COMPARED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_matches_fla(family, dtype):
    fam = registry.family(family)
    op, x = fam.inputs(B, T, H, K, V, device="cuda", dtype=dtype, initial_state=fam.stateful)  # state fp32
    ours = run(op, x, stateful=fam.stateful, backend="triton")
    fla_fn = registry.resolve(fam.fla)
    try:
        theirs = run(fla_fn, x, stateful=fam.stateful)
    except RuntimeError as e:
        # fla refuses some backward kernels on known-bad Triton/GPU pairs (simple_gla's on Triton < 3.7.1 on
        # Hopper): the forward outputs and final state are still compared, the gradients only against the oracle
        if "Triton" not in str(e):
            raise
        print(f"{family} {dtype}: fla refuses its backward here ({str(e).splitlines()[0]}); forward compared")
        theirs = run(fla_fn, x, backward=False, stateful=fam.stateful)
    # both accumulate in fp32 but round dot inputs differently (tf32 / bf16), so compare norms, not entries
    tol = 5e-3 if dtype == torch.float32 else 3e-2
    errors = {name: rel_err(ours[name], theirs[name]) for name in theirs}
    print(f"{family} {dtype}: max relative error vs fla {max(errors.values()):.2e} ({max(errors, key=errors.get)})")
    assert max(errors.values()) < tol, f"{family} {dtype}: relative error vs fla {errors}"
