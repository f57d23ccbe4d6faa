"""Parameter counts and inference state of every architecture in `conf/model/`, at one size.

    python scripts/params.py                                  # d_model 768, 12 layers (the papers' ~125M scale)
    python scripts/params.py --d-model 256 --n-layers 4 --vocab-size 8192
    python scripts/params.py --hybrid                         # also each architecture with one attention layer

Prints a markdown table: parameters (total and without embeddings), the deviation from the transformer at
the same size, and `state_bytes` (batch 1) at 1k and 64k tokens. Architecture configs set their expansion
factors (mlp_ratio, expand, ...) so that every pure architecture lands within +-10% of the transformer;
`--check` exits with status 1 when one does not.
"""

from __future__ import annotations

import argparse
import sys

import torch

import zoo
from zoo.config import compose, conf_dir

TOLERANCE = 0.10


def architectures() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def measure(arch: str, d_model: int, n_layers: int, vocab_size: int, attn_layers: list[int] | None) -> dict:
    """One row; `attn_layers` None keeps the architecture's own attention layers (e.g. hybrid_gla's)."""
    overrides = [
        f"model={arch}",
        f"model.d_model={d_model}",
        f"model.n_layers={n_layers}",
        f"data.vocab_size={vocab_size}",
    ]
    if attn_layers is not None:
        overrides.append(f"model.attn.layers={attn_layers}")
    cfg = compose(overrides)
    with torch.device("meta"):  # no memory, no init: only shapes are needed
        model = zoo.build_model(cfg.model)
    embed = model.embed.weight.numel() + (0 if cfg.model.tie_embeddings else model.lm_head.weight.numel())
    total = model.num_params()
    return {
        "arch": arch + ("" if attn_layers is None else f" +attn{attn_layers}"),
        "attn_layers": attn_layers,
        "layers": " ".join(sorted(set(model.layer_mixers))),
        "params": total,
        "non_embedding": total - embed,
        "state_1k": model.state_bytes(1024),
        "state_64k": model.state_bytes(65536),
    }


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--hybrid", action="store_true", help="also each architecture with attention at layer 1")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless every pure one is within {TOLERANCE:.0%}")
    args = parser.parse_args(argv)

    rows = []
    for arch in architectures():
        rows.append(measure(arch, args.d_model, args.n_layers, args.vocab_size, None))
        if args.hybrid and arch != "transformer":
            rows.append(measure(arch, args.d_model, args.n_layers, args.vocab_size, [1]))
    base = next(r["params"] for r in rows if r["arch"] == "transformer")
    print(f"d_model={args.d_model} n_layers={args.n_layers} vocab_size={args.vocab_size} (tied embeddings)\n")
    print("| architecture | mixers | params | non-embedding | vs transformer | state @1k | state @64k |")
    print("|---|---|---:|---:|---:|---:|---:|")
    off = []
    for r in rows:
        dev = r["params"] / base - 1
        if r["attn_layers"] is None and abs(dev) > TOLERANCE:
            off.append(r["arch"])
        print(
            f"| {r['arch']} | {r['layers']} | {r['params']:,} | {r['non_embedding']:,} | {dev:+.1%} "
            f"| {human(r['state_1k'], 'B')} | {human(r['state_64k'], 'B')} |"
        )
    if off:
        print(f"\noutside +-{TOLERANCE:.0%} of the transformer: {', '.join(off)}")
    return 1 if args.check and off else 0


if __name__ == "__main__":
    sys.exit(main())
