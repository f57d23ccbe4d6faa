"""What reduced-precision weights cost in quality: a trained run's held-out metrics in fp32 and after
`model.quantize(mode)` for each mode, on the run's own validation blocks (rebuilt from its `.hydra/overrides.yaml`,
offline corpus and tokenizer included), with the relative change of each perplexity.

    python scripts/quant_ppl.py runs/tradeoff/mamba2-attn[] runs/tradeoff/transformer-attn[] --out docs/results/quant
    python scripts/quant_ppl.py RUN --modes int8 --max-examples 64                          # a quick look

Writes `<out>/quant_ppl.csv` and `<out>/quant_ppl.md` (one row per run and mode). The target of the CPU
inference work is |delta ppl| <= 1% for every mode.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import zoo
from zoo.config import compose, typed
from zoo.data import build_dataset
from zoo.model.quant import MODES
from zoo.train.loop import evaluate

KEYS = ("val/ppl", "val/ppl_ar", "val/ppl_non_ar", "val/ppl_repeat", "val/ppl_decode")


@torch.no_grad()
def decode_ppl(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
    """Perplexity with every token fed as a decode step (`[B, 1]` through the cache), the path int8 weights take
    with int8 activations; the teacher-forced forward of `evaluate` multiplies prompts in fp32 instead."""
    nll, count = 0.0, 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size], labels[i : i + batch_size]
        cache = None
        for t in range(x.shape[1]):
            out = model(x[:, t : t + 1], cache=cache, use_cache=True)
            cache, keep = out.cache, y[:, t] >= 0
            nll += torch.nn.functional.cross_entropy(out.logits[:, 0][keep].float(), y[:, t][keep], reduction="sum")
            count += int(keep.sum())
    return math.exp(nll.item() / count)


def parse(mode: str) -> tuple[str | None, str | None]:
    """`int8`, `kv_bf16` or `int8+kv_bf16` as quantize()'s (mode, kv_cache)."""
    parts = mode.split("+")
    kv = next((p.removeprefix("kv_") for p in parts if p.startswith("kv_")), None)
    return next((p for p in parts if not p.startswith("kv_")), None), kv


def run_metrics(run: Path, modes: list[str], max_examples: int | None) -> list[dict]:
    overrides = list(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    root = typed(compose(overrides))
    if max_examples is not None:
        root.eval.max_examples = max_examples
    data = build_dataset(root.data)
    model = zoo.from_pretrained(run / "checkpoint").eval()
    rows, base = [], None
    for mode in ["none", *modes]:
        quantized = model if mode == "none" else zoo.from_pretrained(run / "checkpoint").eval().quantize(*parse(mode))
        start = time.perf_counter()
        metrics = evaluate(quantized, data, "val", root.eval, torch.device("cpu"), contextlib.nullcontext)
        inputs, labels = data.eval
        count = len(inputs) if root.eval.max_examples is None else root.eval.max_examples
        metrics["val/ppl_decode"] = decode_ppl(quantized, inputs[:count], labels[:count])
        row = {"run": run.name, "mode": mode, "seconds": round(time.perf_counter() - start, 1)}
        row |= {k: metrics[k] for k in KEYS if k in metrics}
        base = base or row
        for k in KEYS:
            if k in row and mode != "none":
                row[f"delta {k} %"] = 100 * (row[k] / base[k] - 1)
        rows.append(row)
        print(row, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    keys = [k for k in KEYS if any(k in r for r in rows)]
    head = ["run", "mode", *keys, *(f"delta {k} %" for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r["run"], r["mode"]] + [f"{r[k]:.3f}" if k in r else "-" for k in head[2 : 2 + len(keys)]]
        cells += [f"{r[k]:+.2f}" if k in r else "-" for k in head[2 + len(keys) :]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders with a checkpoint/ and .hydra/")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), help=f"{', '.join(MODES)}, kv_bf16 (the KV cache), or int8+kv_bf16"
    )
    parser.add_argument("--max-examples", type=int, default=None, help="validation blocks (default: the run's)")
    parser.add_argument("--out", type=Path, default=Path("runs/quant_ppl"))
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        rows += run_metrics(run, args.modes, args.max_examples)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "quant_ppl.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows)
    (args.out / "quant_ppl.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
