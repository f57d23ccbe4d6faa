"""Compile every forgetting-attention Triton kernel for a CUDA GPU without one (``kernels/triton_compile_check.py``).

python -m kernels.forgetting_attn.triton.compile_check            # sm_90; bf16 and fp32; K = V = 128
python -m kernels.forgetting_attn.triton.compile_check --full     # + fp16, K = V = 32 ... 256, decode
"""

from __future__ import annotations

import itertools
import sys


def launch_all(full: bool) -> None:
    """Run the launchers of ``parallel.py`` on empty tensors, with and without a window."""
    import torch

    from kernels.forgetting_attn.triton.parallel import blocks, forgetting_attn_bwd, forgetting_attn_fwd, seq_cumsum
    from kernels.triton_utils import prepare_chunks

    sizes = [(32, 32), (64, 64), (128, 128), (256, 256)] if full else [(128, 128)]
    dtypes = [torch.bfloat16, torch.float16, torch.float32] if full else [torch.bfloat16, torch.float32]
    lengths = [1, 1000] if full else [1000]
    for (K, V), dtype, T, window in itertools.product(sizes, dtypes, lengths, [None, 128]):
        B, HQ, H = 1, 4, 2
        q, k, v = torch.empty(B, T, HQ, K, dtype=dtype), torch.empty(B, T, H, K, dtype=dtype), torch.empty(B, T, H, V)
        v, gq, lse = v.to(dtype), torch.empty(B, T, HQ), torch.empty(B, T, HQ)
        BT, BS = blocks(T, K, V, dtype)
        chq, chk = prepare_chunks(None, B, T, BT, q.device), prepare_chunks(None, B, T, BS, q.device)
        seq_cumsum(gq, chq.cu)
        forgetting_attn_fwd(q, k, v, gq, gq, 0.1, window, chq, chk)
        o = torch.empty(B, T, HQ, V, dtype=dtype)
        forgetting_attn_bwd(q, k, v, gq, gq, o, lse, torch.empty_like(o), 0.1, window, chq, chk)


if __name__ == "__main__":
    from kernels.triton_compile_check import run

    sys.exit(run(launch_all, __doc__))
