"""Where a decode step's time goes on CPU: the matrix-vector products of a model's own weights.

    python scripts/bench_matvec.py                       # gla and transformer at d_model 768, 12 layers
    python scripts/bench_matvec.py --models mamba2 --d-model 256 --n-layers 4

A one-token decode step reads every weight once, in one matrix-vector product per linear layer. For each
model this prints the bandwidth those products reach on their own (all of the model's linear layers, the
same shapes, one input vector each) with the weights row-major (`[out, in]`, PyTorch's default) and
column-major (`HybridLM.optimize_for_decode`), next to the bandwidth of the `zoo-bench` bound (one
8192 x 8192 row-major product), all measured in this run. The ratio of the two is the part of the bound that
the model's shapes can reach at all; the rest of a decode step is the mixers' own small ops.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import zoo
from kernels.utils import median_seconds
from zoo.bench.measure import machine_limits
from zoo.config import compose


def linear_bandwidth(model: torch.nn.Module, repeats: int) -> tuple[float, int, int]:
    """GB/s of one matrix-vector product through every distinct linear weight of `model`, its bytes, calls."""
    weights = list({id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}.values())
    inputs = [torch.randn(1, w.shape[1]) for w in weights]
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    with torch.inference_mode():
        seconds = median_seconds(lambda: [F.linear(x, w) for x, w in zip(inputs, weights, strict=True)], repeats, "cpu")
    return nbytes / seconds / 1e9, nbytes, len(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gla", "transformer"], help="conf/model names")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    bound = machine_limits(torch.device("cpu"), torch.float32)["matvec_gb_s"]
    print(f"bound: 8192 x 8192 row-major matrix-vector product {bound:.1f} GB/s")
    for name in args.models:
        overrides = [
            f"model={name}",
            f"model.d_model={args.d_model}",
            f"model.n_layers={args.n_layers}",
            f"data.vocab_size={args.vocab_size}",
        ]
        model = zoo.build_model(compose(overrides).model).eval()
        row, nbytes, calls = linear_bandwidth(model, args.repeats)
        col, _, _ = linear_bandwidth(model.optimize_for_decode(), args.repeats)
        print(
            f"{name}: {calls} weights, {nbytes / 1e6:.0f} MB; row-major {row:.1f} GB/s ({row / bound:.0%} of the "
            f"bound), column-major {col:.1f} GB/s ({col / bound:.0%}), column/row {col / row:.2f}x"
        )


if __name__ == "__main__":
    main()
