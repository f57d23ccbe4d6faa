"""The condensed table of docs/results/hybrid_ratio/README.md, read from the run folders' results.json: one row per
run, with its held-out accuracy, steps to the target, training seconds, state bytes, decode tokens/s and a few
cells of the recall grid, and the mean over all of a run's cells when it has the whole grid.

    python scripts/hybrid_ratio_table.py docs/results/hybrid_ratio/runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CELLS = ["64x16", "128x32", "256x16", "512x4", "512x16", "512x32", "512x64"]


def row(results: dict, grid_size: int) -> str:
    m, cfg = results["metrics"], results["config"]
    attn = [i for i, name in enumerate(results["model"]["layers"]) if name == "attn"]
    if len(attn) == len(results["model"]["layers"]):
        point = f"all attention ({cfg['model']['learned_positions']}-row position table)"
    else:
        point = f"{cfg['model']['name']} attn {attn}"
    grid = {k.split("@")[1]: v for k, v in m.items() if k.startswith("mqar/accuracy@")}
    mean = f"{sum(grid.values()) / len(grid):.3f}" if len(grid) == grid_size else f"({len(grid)} cells)"
    steps = m.get("train/steps_to_target") or f"not reached ({m['train/steps']})"
    decode = m.get("bench/decode_tok_s@4096")
    cells = " | ".join(f"{grid[c]:.2f}" if c in grid else "-" for c in CELLS)
    return (
        f"| {point} | {cfg['train']['lr']:g} | {m['mqar/accuracy']:.3f} | {steps} | {m['train/time_s']:.0f} | "
        f"{m['state/bytes@1024']:,} | {f'{decode:.0f}' if decode else '-'} | {cells} | {mean} |"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    args = parser.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in sorted(args.runs.glob("*/results.json"))]
    runs = [r for r in runs if r.get("status") == "completed"]
    grid_size = max(sum(k.startswith("mqar/accuracy@") for k in r["metrics"]) for r in runs)
    print(
        "| point | lr | held-out acc | steps to 0.99 | train s | state bytes @1k | decode tok/s @4k | "
        + " | ".join(CELLS)
        + f" | mean of {grid_size} cells |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(CELLS) + "---:|")
    for r in runs:
        print(row(r, grid_size))
    total = sum(r["metrics"]["train/time_s"] for r in runs)
    print(f"\n{len(runs)} runs, {total / 60:.1f} min of training in all (train/time_s summed).")


if __name__ == "__main__":
    main()
