"""Compile every KDA Triton kernel for a CUDA GPU without one (``kernels/triton_compile_check.py``).

python -m kernels.kda.triton.compile_check            # sm_90; bf16 and fp32; K = V = 128; chunk 64
python -m kernels.kda.triton.compile_check --full     # + fp16, K = 32 ... 256, chunks 16 / 32
"""

from __future__ import annotations

import itertools
import sys


def launch_all(full: bool) -> None:
    """Run the launchers of ``chunk.py`` and ``fused_recurrent.py`` on empty tensors."""
    import torch

    from kernels.kda.triton.chunk import chunk_kda_bwd, chunk_kda_fwd
    from kernels.kda.triton.fused_recurrent import fused_recurrent_kda_fwd
    from kernels.triton_utils import prepare_chunks

    sizes = [(32, 40), (64, 64), (128, 128), (256, 128)] if full else [(128, 128)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if full else [torch.bfloat16, torch.float32]
    chunks = [16, 32, 64] if full else [64]
    for (K, V), dtype, BT in itertools.product(sizes, dtypes, chunks):
        B, T, H = 1, 100, 2
        q, k, v = (torch.empty(B, T, H, d, dtype=dtype) for d in (K, K, V))
        g, beta, h0 = torch.empty(B, T, H, K), torch.empty(B, T, H, dtype=dtype), torch.empty(B, H, K, V)
        ch = prepare_chunks(None, B, T, BT, q.device)
        chunk_kda_fwd(q, k, v, g, beta, 0.1, h0, True, ch)
        Ai = torch.empty(B, T, H, BT)
        chunk_kda_bwd(q, k, v, g, beta, Ai, 0.1, h0, torch.empty_like(v), torch.empty(B, H, K, V), ch)
        fused_recurrent_kda_fwd(q, k, v, g, beta, 0.1, h0, True)


if __name__ == "__main__":
    from kernels.triton_compile_check import run

    sys.exit(run(launch_all, __doc__))
