"""Passkey prompt streamed through a model's cache: prefill tokens/s and process memory as the context grows.

    python scripts/bench_passkey.py                                   # pure GLA, d_model 256, 4 layers, 1M tokens
    python scripts/bench_passkey.py --model transformer --length 65536
    python scripts/bench_passkey.py --checkpoint runs/passkey/checkpoint   # a trained model: also scores the key

The prompt (a 5-digit key at `--depth` inside filler text) is fed `--chunk` tokens per forward call; after
every call the resident set size (RSS, from /proc/self/statm) and the elapsed time are recorded. Writes
`passkey_stream.csv` and `passkey_stream.png` (RSS and tokens/s vs tokens processed) into `--out`, and prints
the prefill throughput and the memory growth after the first `--warmup-chunks` chunks (the goal:
< 200 MiB growth and >= 10k tokens/s for pure GLA at 1M tokens on 2 CPU cores). A random-init model measures
cost only; `--checkpoint` also greedy-decodes the answer.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import torch

import zoo
from zoo.config import compose
from zoo.data.passkey import PASSKEY_DIGITS, passkey_examples
from zoo.evals.recall import greedy_continue

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def build(args) -> zoo.HybridLM:
    if args.checkpoint:
        return zoo.from_pretrained(args.checkpoint)
    overrides = [
        f"model={args.model}",
        f"model.d_model={args.d_model}",
        f"model.n_layers={args.n_layers}",
        "data.vocab_size=257",
        *args.overrides,
    ]
    torch.manual_seed(0)
    return zoo.build_model(compose(overrides).model).eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gla")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--checkpoint", default=None, help="a trained byte-level checkpoint instead of random init")
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--chunk", type=int, default=16384, help="prompt tokens per forward call")
    parser.add_argument("--warmup-chunks", type=int, default=4, help="memory growth is measured after these")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_passkey"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.mixers.gla.chunk_size=32")
    args = parser.parse_args(argv)

    model = build(args)
    prompt, keys = passkey_examples(1, args.length, seed=0, depths=[args.depth])
    print(
        f"{args.checkpoint or args.model}: {model.num_params() / 1e6:.2f}M params, layers {model.layer_mixers}, "
        f"{torch.get_num_threads()} threads, prompt {args.length} tokens in chunks of {args.chunk}"
    )
    rows, out, start = [], None, time.perf_counter()
    with torch.inference_mode():
        for i, piece in enumerate(prompt.split(args.chunk, dim=1)):
            out = model(piece, cache=None if out is None else out.cache, use_cache=True)
            rows.append(
                {
                    "chunk": i,
                    "tokens": out.cache.seen_tokens,
                    "seconds": time.perf_counter() - start,
                    "rss_mib": rss_mib(),
                }
            )
        prefill_s = time.perf_counter() - start
        answer = model.tokenizer.decode(greedy_continue(model, out, PASSKEY_DIGITS)[0]) if args.checkpoint else None
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "passkey_stream.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "passkey_stream.png", args)

    base = rows[min(args.warmup_chunks, len(rows)) - 1]
    growth = max(r["rss_mib"] for r in rows) - base["rss_mib"]
    steady = (rows[-1]["tokens"] - base["tokens"]) / max(rows[-1]["seconds"] - base["seconds"], 1e-9)
    print(
        f"prefill: {args.length} tokens in {prefill_s:.1f} s = {args.length / prefill_s:,.0f} tokens/s "
        f"({steady:,.0f} tokens/s after the first {args.warmup_chunks} chunks)"
    )
    peak, cache_mib = max(r["rss_mib"] for r in rows), model.state_bytes(args.length) / 2**20
    print(
        f"memory: RSS {base['rss_mib']:.0f} MiB after {base['tokens']} tokens, peak {peak:.0f} MiB, "
        f"growth after warm-up {growth:.0f} MiB; cache state_bytes {cache_mib:.2f} MiB"
    )
    print(
        f"target (pure GLA d256 x4 at 1M): growth < 200 MiB: {'met' if growth < 200 else 'MISSED'}; "
        f">= 10k tokens/s: {'met' if args.length / prefill_s >= 10_000 else 'MISSED'}"
    )
    if answer is not None:
        print(f"passkey {keys[0]}: model answered {answer!r} ({'correct' if answer == keys[0] else 'wrong'})")
    print(f"wrote {args.out / 'passkey_stream.csv'} and {args.out / 'passkey_stream.png'}")


def plot(rows, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] for r in rows]
    rate = [(b["tokens"] - a["tokens"]) / (b["seconds"] - a["seconds"]) for a, b in zip(rows, rows[1:], strict=False)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(tokens, [r["rss_mib"] for r in rows], marker=".")
    ax1.set(xscale="log", xlabel="prompt tokens processed", ylabel="RSS (MiB)", title="process memory")
    ax2.plot(tokens[1:], rate, marker=".")
    ax2.set(xscale="log", xlabel="prompt tokens processed", ylabel="tokens/s", title="prefill throughput per chunk")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        f"passkey streamed through {args.checkpoint or args.model} (d_model {args.d_model}, "
        f"{args.n_layers} layers), chunks of {args.chunk}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
