"""Training-step time of an experiment's model at several chunk sizes of its chunked op, as ratios measured in one
run: the models (one per chunk size, the same init) take turns, one optimizer step each, so that a noisy machine
slows them alike; the median per chunk size is reported against the first.

    python scripts/bench_step_chunks.py --models gated_deltanet gated_deltaproduct --chunk-sizes 64 16
    python scripts/bench_step_chunks.py --models gla --chunk-sizes 64 32 16 --overrides data.seq_len=256 \
        data.num_kv_pairs=16

The model is the experiment's (`--experiment`, default zoology_mqar, pure: `model.attn.layers=[]`) at
`--d-model`; the chunk is the `chunk_size` of the model's chunked mixers, and their `torch_chunk_size` is set to
null, so that the chunk under test runs on the torch backend (CPU) too. The batch is random tokens with the MQAR
layout's share of labelled positions, since the step's cost does not depend on the values. Prints one row per
model and chunk size and writes `step_chunks.csv` into `--out` when given.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from zoo.config import compose
from zoo.model.lm import build_model


def build(args, model: str, chunk: int):
    overrides = [f"+experiment={args.experiment}", f"model={model}", "model.attn.layers=[]"]
    cfg = compose([*overrides, f"model.d_model={args.d_model}", *args.overrides])
    chunked = [m for m in OmegaConf.to_container(cfg.model.mixers) if m in _names(cfg.model.mixer)]
    chunked = [m for m in chunked if "chunk_size" in cfg.model.mixers[m]]
    if not chunked:
        raise SystemExit(f"model={model}: its mixer {cfg.model.mixer} has no chunk_size option (no chunked op)")
    for name in chunked:  # the chunk under test, on every backend (no torch_chunk_size)
        cfg.model.mixers[name].chunk_size = chunk
        if "torch_chunk_size" in cfg.model.mixers[name]:
            cfg.model.mixers[name].torch_chunk_size = None
    torch.manual_seed(0)
    net = build_model(cfg.model)
    return net, torch.optim.AdamW(net.parameters(), lr=1e-3), cfg


def _names(mixer) -> set[str]:
    return {mixer} if isinstance(mixer, str) else set(mixer)


def batch(cfg, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens; labels at `num_kv_pairs` positions after the key-value block, as MQAR's queries."""
    g = torch.Generator().manual_seed(0)
    T, n, vocab = cfg.data.seq_len, cfg.data.get("num_kv_pairs", 4), cfg.model.vocab_size
    x = torch.randint(1, vocab, (batch_size, T), generator=g)
    y = torch.full((batch_size, T), -100)
    positions = torch.linspace(2 * n, T - 1, n).long()
    y[:, positions] = torch.randint(vocab // 2, vocab, (batch_size, n), generator=g)
    return x, y


def step(net, opt, x, y) -> float:
    start = time.perf_counter()
    out = net(x, labels=y)
    (out.loss_sum / (y != -100).sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def bench(args, model: str) -> list[dict]:
    built = {c: build(args, model, c) for c in args.chunk_sizes}
    x, y = batch(built[args.chunk_sizes[0]][2], args.batch_size)
    times = {c: [] for c in args.chunk_sizes}
    for net, opt, _ in built.values():
        step(net, opt, x, y)  # warm-up
    for _ in range(args.repeats):
        for c, (net, opt, _) in built.items():
            times[c].append(step(net, opt, x, y))
    first = statistics.median(times[args.chunk_sizes[0]])
    rows = []
    for c in args.chunk_sizes:
        med = statistics.median(times[c])
        rows.append({"model": model, "chunk_size": c, "step_ms": round(med * 1e3, 1), "speedup": round(first / med, 3)})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="conf/model names with a chunked mixer")
    parser.add_argument("--chunk-sizes", nargs="+", type=int, default=[64, 32, 16])
    parser.add_argument("--experiment", default="zoology_mqar")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6, help="timed steps per chunk size (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides, e.g. data.seq_len=128")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); {args.repeats} steps per chunk size, interleaved")
    rows = []
    for model in args.models:
        rows += bench(args, model)
        for r in rows[-len(args.chunk_sizes) :]:
            print(f"{r['model']:>20} chunk {r['chunk_size']:>3}: {r['step_ms']:8.1f} ms/step  {r['speedup']:.2f}x")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "step_chunks.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
