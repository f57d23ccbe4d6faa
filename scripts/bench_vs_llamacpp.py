"""CPU inference against llama.cpp on the same checkpoints: the zoo (fp32 and int8 weights), transformers and
llama.cpp (f32, f16, q8_0; flash attention off and on) on random-init checkpoints of the README's d768 x 12
shape, X prompt tokens then Y generated tokens at batch 1, every system in one zoo-bench run per checkpoint.

    python scripts/bench_vs_llamacpp.py --out docs/results/bench_vs_llamacpp       # every class of CLASSES
    python scripts/bench_vs_llamacpp.py --classes llama --prompt-lens 512 --out runs/vs_llamacpp   # a quick one
    python scripts/bench_vs_llamacpp.py --summarize-only --out docs/results/bench_vs_llamacpp     # tables again

Needs transformers, sentencepiece and llama-cpp-python (pip install 'hybrid-zoo[bench]'; the
latter compiles llama.cpp, ~8 minutes on 2 idle cores). Checkpoints are built by `scripts/bench_imported.py`
(the same classes and shapes as `docs/results/imported_bench`). Writes per class `<out>/<class>/bench.{csv,md}`,
then `<out>/summary.md` (tokens/s per system and length, the machine's bounds, the targets checked) and
`<out>/vs_llamacpp.png` (tokens/s against prompt length, prefill and decode, one line per system).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
import sys
from pathlib import Path

# the classes the zoo imports that llama.cpp also runs (not OLMo-Hybrid or Zamba2: its converter has neither)
CLASSES = ["llama", "qwen3", "mamba2", "bamba", "nemotron_h", "falcon_h1", "qwen3_5_equal_heads"]


def system(arch: str) -> str:
    """The system and precision of a bench.csv row: zoo fp32 / zoo int8 / transformers fp32 / llama.cpp <type>.
    A zoo row is the checkpoint's folder with `+<mode>` suffixes (wherever the run wrote it: the label does not
    depend on the folder, so tables copied from `runs/` summarize the same)."""
    if arch.startswith("transformers:"):
        return "transformers fp32"
    if arch.startswith("llama.cpp:"):
        kind = arch.removeprefix("llama.cpp:").split(":")[0]
        return f"llama.cpp {kind.replace('+fa', ' fa')}"
    parts = arch.rpartition("/")[2].split("+")[1:]  # e.g. ["int8", "kv_bf16"]
    weights = next((p for p in parts if not p.startswith("kv_")), "fp32")
    return "zoo " + "+".join([weights, *(p for p in parts if p.startswith("kv_"))])


def load(out: Path, name: str) -> tuple[dict, str]:
    """{(system, prompt_len): row} of one class's bench.csv (batch 1, measured rows), and its machine line."""
    path = out / name / "bench.csv"
    cells = {}
    for r in csv.DictReader(path.open()):
        label = system(r["arch"])
        if r.get("batch") == "1" and r.get("prefill_tok_s"):
            cells[(label, int(r["prompt_len"]))] = r
    md = (out / name / "bench.md").read_text()
    found = re.search(r"Machine, measured in this run: matrix-vector ([^.]*\.\d+ GB/s, matmul \d+ GFLOP/s)", md)
    return cells, found.group(1) if found else "not recorded"


def best(cells: dict, prefix: str, x: int, key: str) -> tuple[float | None, str]:
    """The better of a llama.cpp type's flash-attention settings (its own best), and which one it was."""
    found = [(float(r[key]), s) for (s, n), r in cells.items() if n == x and (s == prefix or s == prefix + " fa")]
    return max(found) if found else (None, "")


def summary(out: Path, names: list[str]) -> str:
    lines, checks, at8k = [], [], {}
    for name in names:
        if not (out / name / "bench.csv").exists():
            lines += [f"### {name}", "", "no bench.csv (the run failed or was not made)", ""]
            continue
        cells, machine = load(out, name)
        systems = sorted({s for s, _ in cells}, key=lambda s: (not s.startswith("zoo"), s))
        lengths = sorted({n for _, n in cells})
        lines += [f"### {name}", "", f"Machine, same run: matrix-vector {machine}.", ""]
        lines += ["| system | " + " | ".join(f"prefill {x} | decode {x}" for x in lengths) + " |"]
        lines += ["|---|" + "---:|---:|" * len(lengths)]
        for s in systems:
            row = []
            for x in lengths:
                r = cells.get((s, x))
                row += [f"{float(r['prefill_tok_s']):.1f}", f"{float(r['decode_tok_s']):.1f}"] if r else ["-", "-"]
            lines.append(f"| {s} | " + " | ".join(row) + " |")
        lines.append("")
        # fp32 weights against llama.cpp f32, int8 against q8_0 (the int8 prefill target is at 8k only); with and
        # without the bf16 KV cache (llama.cpp keeps its KV cache in f16 by default)
        pairs = [(s, "llama.cpp f32") for s in systems if s.startswith("zoo fp32")]
        pairs += [(s, "llama.cpp q8_0") for s in systems if s.startswith("zoo int8")]
        for x in lengths:
            for ours_label, peer in pairs:
                ours = cells.get((ours_label, x))
                for key, what in (("prefill_tok_s", "prefill"), ("decode_tok_s", "decode")):
                    theirs, which = best(cells, peer, x, key)
                    if not (ours and theirs) or (peer.endswith("q8_0") and what == "prefill" and x < 8192):
                        continue
                    ratio = float(ours[key]) / theirs
                    verdict = "met" if ratio >= 1 else "missed"
                    checks.append(f"{name} {what} @{x}: {ours_label} / {which} = {ratio:.2f}x, {verdict}")
        # the seed's question: a flat-state model's decode (ours, any precision) at 8k against llama.cpp's best
        # transformer row there
        for prefix in ("zoo", "llama.cpp"):
            found = [(float(r["decode_tok_s"]), s) for (s, n), r in cells.items() if n == 8192 and s.startswith(prefix)]
            if found:
                at8k[(name, prefix)] = max(found)
    if ("mamba2", "zoo") in at8k and ("llama", "llama.cpp") in at8k:
        (flat, ours), (dense, theirs) = at8k[("mamba2", "zoo")], at8k[("llama", "llama.cpp")]
        verdict = "met" if flat >= 1.5 * dense else "missed"
        checks.append(
            f"decode @8192: mamba2 ({ours}) / llama ({theirs}) = {flat / dense:.2f}x (target 1.5x), {verdict}"
        )
    return "\n".join(lines + ["Targets:", ""] + [f"- {c}" for c in checks]) + "\n"


def plot(out: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in names if (out / n / "bench.csv").exists()]
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.6 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        cells, _ = load(out, name)
        for s in sorted({s for s, _ in cells}):
            xs = sorted(n for t, n in cells if t == s)
            for ax, key in zip(row, ("prefill_tok_s", "decode_tok_s"), strict=True):
                style = "-" if s.startswith("zoo") else "--" if s.startswith("llama.cpp") else ":"
                ax.plot(xs, [float(cells[(s, x)][key]) for x in xs], style, marker="o", label=s)
        for ax, what in zip(row, ("prefill", "decode (batch 1)"), strict=True):
            ax.set(xscale="log", title=f"{name}: {what}", xlabel="prompt tokens", ylabel="tokens/s")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "vs_llamacpp.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_vs_llamacpp"))
    parser.add_argument("--classes", nargs="*", default=CLASSES)
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=8192, help="zoo-bench's own (conf/bench), the README's table")
    parser.add_argument("--summarize-only", action="store_true", help="tables and plot from an earlier run")
    args = parser.parse_args(argv)
    if not args.summarize_only:
        spec = importlib.util.spec_from_file_location("bench_imported", Path(__file__).with_name("bench_imported.py"))
        imported = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(imported)
        imported.main(
            ["--out", str(args.out), "--classes", *args.classes, "--prompt-lens", *map(str, args.prompt_lens)]
            + ["--gen", str(args.gen), "--d-model", str(args.d_model), "--n-layers", str(args.n_layers)]
            + ["--vocab", str(args.vocab)]
            + ["--bench", "bench.quantize=[none,int8]", "bench.kv_cache=[none,bf16]", "bench.llamacpp=[f32,f16,q8_0]"]
        )
    table = summary(args.out, args.classes)
    (args.out / "summary.md").write_text(table)
    plot(args.out, args.classes)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
