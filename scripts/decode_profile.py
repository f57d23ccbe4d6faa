"""Where a decode step's time goes: weight streaming (the linear layers' matrix-vector products) against
everything else (norms, activations, the recurrence or attention over the cache, Python and dispatch), per
architecture and weight mode, from torch.profiler over decode steps after a prefill.

    python scripts/decode_profile.py --archs transformer mamba2 --modes none int8 --prompt 512
    python scripts/decode_profile.py --path CHECKPOINT --modes none int8      # a checkpoint (zoo or transformers)

Prints one table: ms per token, the share of it in linear layers, the bandwidth those linear layers reach
(their weight bytes / their time), the number of ops per token, and the machine's matrix-vector bandwidth from
the same run (zoo-bench's probe). The step is after `optimize_for_decode()` (and `quantize(mode)`), as zoo-bench
times it.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import zoo
from zoo.bench.measure import machine_limits
from zoo.config import compose
from zoo.model.quant import QuantizedLinear

LINEAR_OPS = ("aten::addmm", "aten::mm", "aten::mv", "aten::linear", "quantized::linear_dynamic", "aten::matmul")


def build(arch: str | None, path: str | None, d_model: int, n_layers: int, vocab: int) -> zoo.HybridLM:
    if path is not None:
        return zoo.from_pretrained(path)
    overrides = [f"model={arch}", f"model.d_model={d_model}", f"model.n_layers={n_layers}", f"data.vocab_size={vocab}"]
    return zoo.build_model(compose(overrides).model)


@torch.inference_mode()
def profile_decode(model: zoo.HybridLM, prompt: int, steps: int) -> dict:
    ids = torch.randint(0, model.config.vocab_size, (1, prompt))
    out = model.prefill(ids, prefill_chunk=2048, max_length=prompt + steps + 4)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    cache = out.cache
    for _ in range(3):  # warm-up steps
        out = model(nxt, cache=cache, logits_to_keep=1)
        cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            out = model(nxt, cache=cache, logits_to_keep=1)
            cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
    events = prof.key_averages()
    top = [e for e in events if not e.key.startswith("aten::") or e.cpu_time_total == e.self_cpu_time_total]
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps  # ms per token, every op's own time
    linear = sum(e.cpu_time_total for e in events if e.key in ("aten::linear", "quantized::linear_dynamic"))
    linear = linear / 1e3 / steps
    ops = sum(e.count for e in top if e.key.startswith(("aten::", "quantized::"))) / steps
    return {"ms": total, "linear_ms": linear, "ops": ops}


def weight_bytes_of_linears(model: zoo.HybridLM) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            total += m.weight_bytes()
        elif isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["transformer", "mamba2"])
    parser.add_argument("--path", default=None, help="a checkpoint instead of --archs")
    parser.add_argument("--modes", nargs="+", default=["none", "int8"])
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args(argv)
    limits = machine_limits(torch.device("cpu"), torch.float32)
    print(
        f"machine: matrix-vector {limits['matvec_gb_s']:.1f} GB/s, {torch.get_num_threads()} threads; "
        f"prompt {args.prompt}, {args.steps} decode steps profiled"
    )
    print("| model | mode | ms / token | linear ms | linear share | linear GB/s | ops / token |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for arch in [args.path] if args.path else args.archs:
        for mode in args.modes:
            model = build(None if args.path else arch, args.path, args.d_model, args.n_layers, args.vocab).eval()
            if mode != "none":
                model.quantize(mode)
            model.optimize_for_decode()
            r = profile_decode(model, args.prompt, args.steps)
            gb_s = weight_bytes_of_linears(model) / (r["linear_ms"] / 1e3) / 1e9
            print(
                f"| {arch} | {mode} | {r['ms']:.2f} | {r['linear_ms']:.2f} | {r['linear_ms'] / r['ms']:.0%} | "
                f"{gb_s:.1f} | {r['ops']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
