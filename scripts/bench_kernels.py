"""Time the GLA backends: naive per-step loop vs chunked PyTorch, forward (and forward+backward).

Usage (from the repository root)::

    python3 scripts/bench_kernels.py --B 2 --H 4 --K 64 --V 64 --T 256 1024 --repeats 5

Prints one row per T with the median over ``--repeats`` runs (after one warm-up) in milliseconds,
for the forward and for forward+backward, and the ratios naive / chunked measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--B", type=int, default=2, help="batch size")
    parser.add_argument("--H", type=int, default=4, help="heads")
    parser.add_argument("--K", type=int, default=64, help="key head dim")
    parser.add_argument("--V", type=int, default=64, help="value head dim")
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024], help="sequence lengths")
    parser.add_argument("--chunk-size", type=int, default=64, help="chunk size of the torch backend")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-naive-backward", action="store_true", help="skip naive forward+backward (slow)")
    args = parser.parse_args(argv)

    try:
        import torch
        import torch.nn.functional as F

        from kernels.gla import chunk_gla
    except ImportError:  # run as a script without installing the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import torch
        import torch.nn.functional as F

        from kernels.gla import chunk_gla

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(
        f"GLA B={args.B} H={args.H} K={args.K} V={args.V} chunk={args.chunk_size} dtype={args.dtype} "
        f"device={device} threads={torch.get_num_threads()} repeats={args.repeats} (median ms)"
    )
    header = (
        f"{'T':>7} {'naive fwd':>11} {'torch fwd':>11} {'naive/torch':>12} "
        f"{'naive fwd+bwd':>14} {'torch fwd+bwd':>14} {'naive/torch':>12}"
    )
    print(header)
    print("-" * len(header))
    for T in args.T:
        gen = torch.Generator().manual_seed(0)
        q, k, g = (torch.randn(args.B, T, args.H, args.K, generator=gen) for _ in range(3))
        v = torch.randn(args.B, T, args.H, args.V, generator=gen)
        q, k, v, g = (x.to(device, dtype) for x in (q, k, v, F.logsigmoid(g) / 16))

        def fwd(backend: str, q=q, k=k, v=v, g=g) -> None:
            with torch.no_grad():
                chunk_gla(q, k, v, g, backend=backend, chunk_size=args.chunk_size)
            sync()

        leaves = [x.detach().requires_grad_() for x in (q, k, v, g)]

        def fwd_bwd(backend: str, leaves=leaves) -> None:
            o, _ = chunk_gla(*leaves, backend=backend, chunk_size=args.chunk_size)
            o.float().square().mean().backward()
            sync()

        naive = median_ms(lambda: fwd("naive"), args.repeats)
        chunked = median_ms(lambda: fwd("torch"), args.repeats)
        chunked_bwd = median_ms(lambda: fwd_bwd("torch"), args.repeats)
        row = f"{T:>7} {naive:>11.2f} {chunked:>11.2f} {naive / chunked:>11.1f}x"
        if args.skip_naive_backward:
            print(f"{row} {'-':>14} {chunked_bwd:>14.2f} {'-':>12}")
        else:
            naive_bwd = median_ms(lambda: fwd_bwd("naive"), args.repeats)
            print(f"{row} {naive_bwd:>14.2f} {chunked_bwd:>14.2f} {naive_bwd / chunked_bwd:>11.1f}x")


if __name__ == "__main__":
    main()
