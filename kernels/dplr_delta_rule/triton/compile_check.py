"""Compile every DPLR Triton kernel for a CUDA GPU without one, and report registers, spills and shared memory.

    python -m kernels.dplr_delta_rule.triton.compile_check          # sm_90; bf16 and fp32; K = V = 64 / 128; chunk 64
    python -m kernels.dplr_delta_rule.triton.compile_check --full   # + fp16, K = 32 ... 256, chunks 16 / 32

Triton's interpreter (``TRITON_INTERPRET=1``, how the tests run on CPU) checks the kernels' arithmetic but not
that they compile, nor what they cost. This runs the real launchers of ``chunk.py`` and ``fused_recurrent.py`` on
empty CPU tensors with every launch replaced by ``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` (no driver
needed) and reads each cubin's resources with ``cuobjdump``; each distinct specialization is printed once. Exit
status 1 if a kernel does not compile or needs more shared memory than the target has. The same tool as
``kernels/delta_rule/triton/compile_check.py``, pointed at this family's launchers.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile

SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
"""Largest shared memory per block (bytes) by compute capability."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_LIMIT))
    parser.add_argument("--full", action="store_true", help="all dtypes, head sizes and chunk sizes")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted", file=sys.stderr)
        return 2

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

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
        shown = {k: v for k, v in constants.items() if k in ("BT", "BK", "BV", "DT", "PREC")}
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

    from kernels.dplr_delta_rule.triton.chunk import chunk_dplr_bwd, chunk_dplr_fwd
    from kernels.dplr_delta_rule.triton.fused_recurrent import fused_recurrent_dplr_fwd
    from kernels.triton_utils import prepare_chunks

    sizes = [(32, 40), (64, 64), (128, 128), (256, 128)] if args.full else [(64, 64), (128, 128)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if args.full else [torch.bfloat16, torch.float32]
    chunks = [16, 32, 64] if args.full else [64]
    for (K, V), dtype, BT in itertools.product(sizes, dtypes, chunks):
        B, T, H = 1, 100, 2
        q, k, a, b = (torch.empty(B, T, H, K, dtype=dtype) for _ in range(4))
        v, gk = torch.empty(B, T, H, V, dtype=dtype), torch.empty(B, T, H, K)
        h0 = torch.empty(B, H, K, V)
        ch = prepare_chunks(None, B, T, BT, q.device)
        chunk_dplr_fwd(q, k, v, a, b, gk, 0.1, h0, True, ch)
        chunk_dplr_bwd(q, k, v, a, b, gk, 0.1, h0, torch.empty_like(v), torch.empty(B, H, K, V), ch)
        fused_recurrent_dplr_fwd(q, k, v, a, b, gk, 0.1, h0, True)
    print(f"{len(seen)} specializations compiled for sm_{args.arch}; {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
