"""Compile a family's Triton kernels for a CUDA GPU without one, and report registers, spills and shared memory.

Triton's interpreter (``TRITON_INTERPRET=1``, how the tests run on CPU) checks the kernels' arithmetic but not
that they compile, nor what they cost. Each family's ``kernels/<family>/triton/compile_check.py`` defines
``launch_all(full)``, which runs the family's real launchers on empty CPU tensors; :func:`run` replaces every
kernel launch by ``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` (no driver needed) and reads each cubin's
resources with ``cuobjdump``. Each distinct specialization is printed once: warps / stages, registers, spilled
bytes (local + stack) and shared memory. Exit status 1 if a kernel does not compile or needs more shared memory
than the target has. Must run without ``TRITON_INTERPRET``::

    python -m kernels.<family>.triton.compile_check            # sm_90; the family's default shapes
    python -m kernels.<family>.triton.compile_check --full     # every dtype, head size and chunk size
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
"""Largest shared memory per block (bytes) by compute capability."""

SHOWN = ("BT", "BS", "BK", "BV", "GATED", "WINDOW", "DT", "PREC")
"""Constexprs printed beside each specialization (those a family does not have are left out)."""


def run(launch_all: Callable[[bool], None], description: str, argv: Sequence[str] | None = None) -> int:
    """Parse ``--arch / --full / --tf32``, then compile every launch ``launch_all(full)`` makes; the exit status."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_LIMIT))
    parser.add_argument("--full", action="store_true", help="all dtypes, head sizes and chunk sizes")
    parser.add_argument("--tf32", action="store_true", help="fp32 inputs with TF32 products (matmul precision 'high')")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted", file=sys.stderr)
        return 2

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if args.tf32:
        torch.set_float32_matmul_precision("high")
    short = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64"}
    short[torch.int32] = "i32"
    seen: set = set()
    failures: list[str] = []

    def compile_launch(fn, *launch_args, **kwargs):
        warps, stages = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3)
        values = dict(zip(fn.arg_names, launch_args, strict=False)) | kwargs
        signature, constants = {}, {}
        for p in fn.params:
            x = values[p.name]
            if p.is_constexpr or x is None:
                signature[p.name], constants[p.name] = "constexpr", x
            elif isinstance(x, torch.Tensor):
                signature[p.name] = "*" + short[x.dtype]
            else:
                signature[p.name] = "fp32" if isinstance(x, float) else "i64" if abs(x) >= 2**31 else "i32"
        key = (fn.__name__, str(sorted(signature.items())), str(sorted(constants.items())), warps, stages)
        if key in seen:
            return
        seen.add(key)
        shown = {k: v for k, v in constants.items() if k in SHOWN}
        try:
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constants),
                target=GPUTarget("cuda", args.arch, 32),
                options={"num_warps": warps, "num_stages": stages},
            )
        except Exception as e:  # report every failing specialization, then fail
            failures.append(f"{fn.__name__} {shown}: {type(e).__name__}: {e}")
            print(f"{fn.__name__:16s} FAILED to compile {shown}: {e}")
            return
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run(
                [triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        regs = int(re.findall(r"REG:(\d+)", usage)[-1])
        spill = int(re.findall(r"LOCAL:(\d+)", usage)[-1]) + int(re.findall(r"STACK:(\d+)", usage)[-1])
        shared = compiled.metadata.shared
        note = ""
        if shared > SHARED_LIMIT[args.arch]:
            note = f"  <-- needs more shared memory than sm_{args.arch} has ({SHARED_LIMIT[args.arch]})"
            failures.append(f"{fn.__name__} {shown}: shared memory {shared}")
        print(
            f"{fn.__name__:16s} warps={warps} stages={stages} regs={regs:3d} spill={spill:5d}B "
            f"shared={shared:6d}B {shown}{note}"
        )

    JITFunction.__getitem__ = lambda self, grid: lambda *a, **kw: compile_launch(self, *a, **kw)
    launch_all(args.full)
    print(f"{len(seen)} specializations compiled for sm_{args.arch}; {len(failures)} failures")
    return 1 if failures else 0
