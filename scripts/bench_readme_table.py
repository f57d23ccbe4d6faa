"""The README's condensed inference-cost tables from a `zoo-bench` bench.csv (one table per model size).

    python scripts/bench_readme_table.py docs/results/bench_cpu/bench.csv

Columns: parameters; prefill and decode tokens/s at batch 1 for prompts of 512 / 8k / 64k tokens; peak memory
at 1k and 64k (the memory target compares those two); decode tokens/s at the largest batch. A skipped or
failed cell shows "—" (the reason is in bench.md); an architecture that failed entirely shows its error.
"""

from __future__ import annotations

import argparse
import csv

LENGTHS = {"512": 512, "8k": 8192, "64k": 65536}


def num(value: str | None, fmt: str) -> str:
    return "—" if value in (None, "") else format(float(value), fmt)


def tables(rows: list[dict]) -> str:
    sizes = list(dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows))
    batches = sorted({int(r["batch"]) for r in rows if r.get("batch")})
    big = batches[-1] if batches else 1
    out = []
    for d, n in sizes:
        at_size = [r for r in rows if (r["d_model"], r["n_layers"]) == (d, n)]
        cells = {(r["arch"], int(r["batch"]), int(r["prompt_len"])): r for r in at_size if r.get("prompt_len")}
        big_len = max((x for (_, b, x) in cells if b == big), default=None)
        head = (
            ["arch", "params"]
            + [f"prefill {k}" for k in LENGTHS]
            + [f"decode {k}" for k in LENGTHS]
            + ["peak MiB 1k", "peak MiB 64k", f"decode, batch {big} @{big_len}"]
        )
        out += [
            f"**d_model {d}, {n} layers** (batch 1 unless noted; tokens/s)",
            "",
            "| " + " | ".join(head) + " |",
            "|---|" + "---:|" * (len(head) - 1),
        ]
        for arch in dict.fromkeys(r["arch"] for r in at_size):
            failed = [r for r in at_size if r["arch"] == arch and str(r.get("note", "")).startswith("failed")]
            if failed:
                out.append(f"| {arch} | | {failed[0]['note']} |")
                continue
            params = next(r["params"] for r in at_size if r["arch"] == arch and r.get("params"))
            line = [arch, f"{int(params) / 1e6:.1f}M"]
            line += [num(cells.get((arch, 1, x), {}).get("prefill_tok_s"), ".0f") for x in LENGTHS.values()]
            line += [num(cells.get((arch, 1, x), {}).get("decode_tok_s"), ".1f") for x in LENGTHS.values()]
            line += [num(cells.get((arch, 1, x), {}).get("peak_mib"), ".0f") for x in (1024, 65536)]
            line.append(num(cells.get((arch, big, big_len), {}).get("decode_tok_s"), ".0f"))
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="bench.csv written by zoo-bench")
    with open(parser.parse_args().csv) as f:
        print(tables(list(csv.DictReader(f))))


if __name__ == "__main__":
    main()
