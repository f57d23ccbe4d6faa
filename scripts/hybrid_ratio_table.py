"""The condensed table of docs/results/hybrid_ratio/README.md, from the same rows as `zoo-chart`'s tradeoff.csv: one
row per completed run, with its held-out accuracy, steps to the target, training seconds, state bytes, decode
tokens/s and a few cells of the recall grid, and the mean over the cells `zoo-chart`'s mqar_grid.png averages.

    python scripts/hybrid_ratio_table.py docs/results/hybrid_ratio/runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.report.chart import load_rows, mean_cells, mqar_cells

CELLS = ["64x16", "128x32", "256x16", "512x4", "512x16", "512x32", "512x64"]


def point(row: dict) -> str:
    if row["attn_layers"] == row["n_layers"]:
        positions = row["learned_positions"]
        table = "no position table" if positions is None else f"{positions}-row position table"
        sequences = "" if row.get("train_size") is None else f", {row['train_size'] // 1000}k training sequences"
        return f"all attention ({table}{sequences})"
    return f"{row['architecture']} attn [{', '.join(row['attn_at'].split())}]"


def line(row: dict, common: list[str], has_all: bool) -> str:
    grid = {c: row.get(f"mqar_acc@{c}") for c in CELLS}
    cells_run = sum(row.get(c) is not None for c in common)
    mean = f"{sum(row[c] for c in common) / len(common):.3f}" if has_all else f"({cells_run} cells)"
    steps = row["steps_to_target"] or f"not reached ({row['steps']})"
    decode = row.get("decode_tok_s@4096")
    cells = " | ".join("-" if v is None else f"{v:.2f}" for v in grid.values())
    return (
        f"| {point(row)} | {row['lr']:g} | {row['mqar_acc']:.3f} | {steps} | {row['train_s']:.0f} | "
        f"{row['state_bytes_1k']:,} | {'-' if decode is None else f'{decode:.0f}'} | {cells} | {mean} |"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path)
    args = parser.parse_args(argv)
    rows = [r for r in load_rows([args.runs]) if r["status"] == "completed"]
    common, kept, _ = mean_cells(rows, mqar_cells(rows))
    print(
        "| point | lr | held-out acc | steps to 0.99 | train s | state bytes @1k | decode tok/s @4k | "
        + " | ".join(CELLS)
        + f" | mean of {len(common)} cells |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(CELLS) + "---:|")
    for row in rows:
        print(line(row, common, row in kept))
    total = sum(r["train_s"] for r in rows)
    print(f"\n{len(rows)} runs, {total / 60:.1f} min of training in all (train/time_s summed).")


if __name__ == "__main__":
    main()
