"""Compile every delta-rule Triton kernel for a CUDA GPU without one (``kernels/triton_compile_check.py``).

python -m kernels.delta_rule.triton.compile_check            # sm_90; bf16 and fp32; K = V = 128; chunk 64
python -m kernels.delta_rule.triton.compile_check --full     # + fp16, K = 32 ... 256, chunks 16 / 32
"""

from __future__ import annotations

import itertools
import sys


def launch_all(full: bool) -> None:
    """Run the launchers of ``chunk.py`` and ``fused_recurrent.py`` on empty tensors, gated and not."""
    import torch

    from kernels.delta_rule.triton.chunk import chunk_gated_delta_rule_bwd, chunk_gated_delta_rule_fwd
    from kernels.delta_rule.triton.fused_recurrent import fused_recurrent_gated_delta_rule_fwd
    from kernels.triton_utils import prepare_chunks

    sizes = [(32, 40), (64, 64), (128, 128), (256, 128)] if full else [(128, 128)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if full else [torch.bfloat16, torch.float32]
    chunks = [16, 32, 64] if full else [64]
    for (K, V), dtype, BT, gated in itertools.product(sizes, dtypes, chunks, [False, True]):
        B, T, H = 1, 100, 2
        q, k, v = (torch.empty(B, T, H, d, dtype=dtype) for d in (K, K, V))
        g = torch.empty(B, T, H) if gated else None
        beta, h0 = torch.empty(B, T, H, dtype=dtype), torch.empty(B, H, K, V)
        ch = prepare_chunks(None, B, T, BT, q.device)
        chunk_gated_delta_rule_fwd(q, k, v, g, beta, 0.1, h0, True, ch)
        Ai = torch.empty(B, T, H, BT)
        chunk_gated_delta_rule_bwd(q, k, v, g, beta, Ai, 0.1, h0, torch.empty_like(v), torch.empty(B, H, K, V), ch)
        fused_recurrent_gated_delta_rule_fwd(q, k, v, g, beta, 0.1, h0, True)


if __name__ == "__main__":
    from kernels.triton_compile_check import run

    sys.exit(run(launch_all, __doc__))
