"""What each training option costs or saves, measured as ratios in one run: tokens/s of a training step with each
option on and off, peak memory with and without activation checkpointing and the chunked loss, and pre-tokenized
data (`data=tokens`) against the on-the-fly text path.

    python scripts/bench_train.py --out docs/results/bench_train              # the published run (~20 min, 2 cores)
    python scripts/bench_train.py --quick --out runs/bench_train_quick        # a smoke run (~2 min)
    python scripts/bench_train.py --parts memory --memory-size d768x12 --memory-seq 2048
    python scripts/bench_train.py --parts mqar --threads 1 --mqar-models kda mamba2 --mqar-settings 128:8

The mqar part times the MQAR grid's own jobs (`+experiment=zoology_mqar`, width 64) eager and with
`train.compile=blocks`: at that grid's small heads the step is many small elementwise ops, which compile fuses.

Every configuration is its own `zoo-train` process (the trainer users run, its options as overrides), so the peak
memory of one cannot leak into the next; each reports the trainer's own `train/tokens_per_s` (median over the steps
after `--warmup`) and `train/peak_mem_bytes` (the largest step's RSS high-water mark on CPU, the allocator's peak on
CUDA: weights, optimizer state and activations). Both models train from one pre-tokenized BPE corpus made at the
start (`zoo-data prepare`, the offline corpus), except the on-the-fly row, which tokenizes the same text itself.

Writes `bench_train.csv` / `.md` (every configuration, its ratio to its baseline) into `--out` and prints them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
HYBRID = " with attention in every 4th layer from layer 1"
TEXT_PARTS = {"speed", "memory", "data"}  # the parts that train on the BPE corpus (mqar makes its own data)


def size_overrides(size: str, hybrid: bool) -> list[str]:
    """`d512x8` -> model width and depth overrides; a hybrid gets attention in every 4th layer from layer 1."""
    d, n = size.removeprefix("d").split("x")
    attn = f"model.attn.layers=[{','.join(str(i) for i in range(1, int(n), 4))}]" if hybrid else "model.attn.layers=[]"
    return [f"model.d_model={d}", f"model.n_layers={n}", attn]


def speed_rows(args) -> list[tuple[str, str, list[str]]]:
    """(name, baseline name, overrides): each option against the plain step."""
    base = ["train.optimizer_impl=for_loop", "train.prefetch=0"]
    rows = [
        ("plain step", "plain step", base),
        ("optimizer_impl=foreach", "plain step", [*base, "train.optimizer_impl=foreach"]),
        ("prefetch=2", "plain step", [*base, "train.prefetch=2"]),
        ("grad_accum_steps=4", "plain step", [*base, "train.grad_accum_steps=4"]),
        ("activation_checkpointing=1", "plain step", [*base, "train.activation_checkpointing=1"]),
        (f"loss_chunk_size={args.chunk}", "plain step", [*base, f"train.loss_chunk_size={args.chunk}"]),
        ("compile=model", "plain step", [*base, "train.compile=model"]),
        ("compile=blocks", "plain step", [*base, "train.compile=blocks"]),
        ("defaults (foreach, prefetch=2)", "plain step", []),
    ]
    return [
        (n, b, [*size_overrides(args.speed_size, args.hybrid), f"data.seq_len={args.speed_seq}", *o])
        for n, b, o in rows
    ]


def memory_rows(args) -> list[tuple[str, str, list[str]]]:
    common = [*size_overrides(args.memory_size, args.hybrid), f"data.seq_len={args.memory_seq}", "train.batch_size=1"]
    chunk = f"train.loss_chunk_size={args.chunk}"
    rows = [
        ("memory: plain", "memory: plain", []),
        ("memory: activation_checkpointing=1", "memory: plain", ["train.activation_checkpointing=1"]),
        (f"memory: loss_chunk_size={args.chunk}", "memory: plain", [chunk]),
        ("memory: both", "memory: plain", ["train.activation_checkpointing=1", chunk]),
    ]
    return [(n, b, [*common, *o]) for n, b, o in rows]


def mqar_rows(args) -> list[tuple[str, str, list[str]]]:
    """Each MQAR grid job (model x setting, pure) eager and under each compile mode, against eager."""
    rows = []
    for setting in args.mqar_settings:
        seq, kv = (int(x) for x in setting.split(":"))
        for model in args.mqar_models:
            job = [f"model={model}", f"data.seq_len={seq}", f"data.num_kv_pairs={kv}"]
            name = f"mqar ({seq}, {kv}) {model}"
            rows.append((f"{name}: eager", f"{name}: eager", job))
            rows += [(f"{name}: compile={m}", f"{name}: eager", [*job, f"train.compile={m}"]) for m in args.compile]
    common = ["+experiment=zoology_mqar", "model.attn.layers=[]", f"model.d_model={args.mqar_width}"]
    return [(n, b, [*common, f"train.num_threads={args.threads}", *o]) for n, b, o in rows]


def run_config(overrides: list[str], steps: int, workdir: Path, timeout: int) -> dict:
    """One zoo-train process of `steps` steps; the trainer's per-step metrics and the process's wall time."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    cmd = [
        sys.executable,
        "-m",
        "zoo.train",
        f"hydra.run.dir={run_dir}",
        f"train.max_steps={steps}",
        "train.log_every=1",
        f"train.eval_every={10**9}",
        f"train.save_every={10**9}",
        "eval.max_examples=1",
        "eval.batch_size=1",
        "eval.state_bytes_at=[]",
        *overrides,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail), "wall_s": wall}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in records if "train/tokens_per_s" in r]
    return {"steps": steps_, "wall_s": wall}


def summarize(result: dict, warmup: int) -> dict:
    if "error" in result:
        nan = float("nan")
        return {"tokens_per_s": nan, "peak_mib": nan, "mfu": nan, "first_steps_s": nan, **result}
    timed = [r for r in result["steps"] if r["step"] > warmup]
    first = [r for r in result["steps"] if r["step"] <= warmup]
    return {
        "tokens_per_s": statistics.median(r["train/tokens_per_s"] for r in timed),
        "peak_mib": max(r["train/peak_mem_bytes"] for r in timed) / 2**20,
        "mfu": statistics.median(r.get("train/mfu", float("nan")) for r in timed),
        "first_steps_s": first[-1]["time_s"] if first else float("nan"),  # includes compilation
        "wall_s": result["wall_s"],
        # the process's time outside the optimizer steps: start-up (imports, data, model), the end's evaluation
        # of one example and its checkpoint; the same for every row but the data path's
        "outside_steps_s": result["wall_s"] - result["steps"][-1]["time_s"],
    }


def prepare_corpus(args, workdir: Path) -> tuple[Path, float]:
    out = workdir / "corpus"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "zoo.data.cli", "prepare", *args.data, "--out", str(out), "--workers", "2"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    return out, time.perf_counter() - start


def data_rows(args, corpus: Path) -> list[tuple[str, str, list[str]]]:
    """data=tokens (the baseline of the other parts) against data=text tokenizing the same text at start-up."""
    common = [*size_overrides(args.speed_size, args.hybrid), f"data.seq_len={args.speed_seq}"]
    return [
        ("data=tokens", "data=tokens", [*common, "data=tokens", f"data.path={corpus}"]),
        ("data=text (on the fly)", "data=tokens", [*common, *args.data]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gla", help="conf/model option (its linear mixer)")
    parser.add_argument("--pure", dest="hybrid", action="store_false", help="no attention layers")
    parser.add_argument("--speed-size", default="d256x4", help="width x depth of the tokens/s rows")
    parser.add_argument("--speed-seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="batch of the tokens/s rows")
    parser.add_argument("--memory-size", default="d768x12", help="width x depth of the memory rows (batch 1)")
    parser.add_argument("--memory-seq", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000, help="BPE vocabulary of the corpus")
    parser.add_argument("--chunk", type=int, default=512, help="train.loss_chunk_size of the chunked-loss rows")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians (compilation)")
    parser.add_argument("--memory-steps", type=int, default=3, help="optimizer steps per memory configuration")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="train.num_threads")
    parts = ["speed", "memory", "data", "mqar"]
    parser.add_argument("--parts", nargs="+", default=parts[:3], choices=parts, help="mqar: not run by default")
    parser.add_argument("--mqar-models", nargs="+", default=["kda", "gated_deltaproduct", "mamba2", "transformer"])
    parser.add_argument("--mqar-settings", nargs="+", default=["64:4", "128:8"], help="seq_len:kv_pairs")
    parser.add_argument("--mqar-width", type=int, default=64)
    parser.add_argument("--compile", nargs="+", default=["blocks"], choices=["blocks", "model"], help="mqar rows")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the script")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    args = parser.parse_args()
    if args.quick:
        args.speed_size, args.speed_seq, args.memory_size, args.memory_seq = "d64x2", 128, "d64x2", 256
        args.vocab, args.chunk, args.steps, args.warmup, args.batch, args.memory_steps = 1024, 64, 4, 2, 4, 2
    args.data = ["data=text", "data.tokenizer=bpe", f"data.bpe_vocab_size={args.vocab}"]
    args.out.mkdir(parents=True, exist_ok=True)
    args.hybrid = args.hybrid and args.model != "transformer"
    fixed = [f"model={args.model}", f"train.num_threads={args.threads}", "train.warmup_steps=1", "train.lr=3e-4"]
    fixed.append(f"model.vocab_size={args.vocab}")  # BPE may learn fewer merges than asked; the head stays this size

    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        workdir = Path(tmp)
        corpus, prepare_s = None, float("nan")
        if TEXT_PARTS & set(args.parts):
            corpus, prepare_s = prepare_corpus(args, workdir)
            print(f"zoo-data prepare ({args.vocab} BPE tokens, the offline corpus): {prepare_s:.1f} s", flush=True)
        plan = []
        tokens = ["data=tokens", f"data.path={corpus}"]
        if "speed" in args.parts:
            plan += [(n, b, [*tokens, f"train.batch_size={args.batch}", *o]) for n, b, o in speed_rows(args)]
        if "memory" in args.parts:
            plan += [(n, b, [*tokens, *o]) for n, b, o in memory_rows(args)]
        if "data" in args.parts:
            plan += [(n, b, [f"train.batch_size={args.batch}", *o]) for n, b, o in data_rows(args, corpus)]
        plan = [(n, b, [*fixed, *o]) for n, b, o in plan]
        if "mqar" in args.parts:
            plan += mqar_rows(args)  # the experiment's own batch, lr and data
        rows = []
        for name, base, overrides in plan:
            steps, warmup = (args.memory_steps, 1) if name.startswith("memory") else (args.steps, args.warmup)
            result = summarize(run_config(overrides, steps, workdir, args.timeout), warmup)
            rows.append({"name": name, "baseline": base, "overrides": " ".join(overrides), **result})
            print(
                f"{name:38s} {result['tokens_per_s']:9.1f} tok/s  peak {result['peak_mib']:8.0f} MiB  "
                f"process {result['wall_s']:6.1f} s {result.get('error', '')}",
                flush=True,
            )
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        base = by_name[r["baseline"]]
        r["speed_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
    write(rows, args, prepare_s)
    failed = [r["name"] for r in rows if "error" in r]
    if failed:
        sys.exit(f"failed configurations: {failed}")


def write(rows: list[dict], args, prepare_s: float) -> None:
    keys = ["name", "baseline", "tokens_per_s", "speed_ratio", "peak_mib", "memory_ratio", "mfu", "first_steps_s"]
    keys += ["outside_steps_s", "wall_s", "overrides"]
    with open(args.out / "bench_train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    lines = [f"train.num_threads={args.threads}; {machine}"]
    if TEXT_PARTS & set(args.parts):
        lines += [
            f"model={args.model}{HYBRID if args.hybrid else ''}; tokens/s rows: {args.speed_size}, seq "
            f"{args.speed_seq}, batch {args.batch}; memory rows: {args.memory_size}, seq {args.memory_seq}, batch 1; "
            f"BPE vocab {args.vocab}; {args.steps} steps per configuration ({args.memory_steps} for memory), medians "
            f"over the steps after {args.warmup} (1)",
            f"`zoo-data prepare` of the corpus: {prepare_s:.1f} s",
        ]
    if "mqar" in args.parts:
        lines.append(
            f"mqar rows: `+experiment=zoology_mqar` (its batch, lr, vocab and data), width {args.mqar_width}, pure; "
            f"{args.steps} steps, medians over the steps after {args.warmup}; first steps s includes compilation"
        )
    lines += [
        "",
        "| configuration | tokens/s | x base | peak MiB | x base | first steps s | outside steps s | baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:.1f} | {r['speed_ratio']:.2f} | {r['peak_mib']:.0f} | "
            f"{r['memory_ratio']:.2f} | {r['first_steps_s']:.1f} | {r.get('outside_steps_s', float('nan')):.1f} | "
            f"{r['baseline']} |"
        )
    (args.out / "bench_train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
