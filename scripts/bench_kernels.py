"""Benchmark every kernel family and backend: forward and forward+backward time over sequence length,
against causal softmax attention of the same shape, with the kernel library's performance goals (ratios measured in
one run).

    python scripts/bench_kernels.py                         # all families, T = 512 ... 32768
    python scripts/bench_kernels.py --families gla --T 2048 16384 --repeats 5
    python scripts/bench_kernels.py --families kda --chunk-sizes 64 16 --B 64 --H 4 --K 16 --V 16 --T 64 128

Writes `kernels.csv` (one row per family/backend/T) and `kernels.png` (time vs T, log-log, forward and
forward+backward) into `--out`, and prints the table and the ratios. The naive per-step loop and full
attention are only run up to `--naive-max-T` / `--attn-max-T` (longer ones are listed as skipped).
On CUDA it times the Triton backends, SDPA and flash-attn (when installed) as well, and — when
flash-linear-attention is installed (`pip install fla-core`) — fla's Triton kernels of the same families at the
same shapes, the anchor for the GPU target (ours within 1.5x of fla's forward+backward time at T=4096).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import registry
from kernels.backend import available_backends
from kernels.utils import median_seconds


def attention_inputs(B, T, H, K, V, device, dtype) -> tuple[Callable, dict]:
    q, k, v = (torch.randn(B, H, T, d, device=device, dtype=dtype) for d in (K, K, V))
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), {"q": q, "k": k, "v": v}


def flash_inputs(B, T, H, K, V, device, dtype) -> tuple[Callable, dict]:
    from flash_attn import flash_attn_func

    q, k, v = (torch.randn(B, T, H, d, device=device, dtype=dtype) for d in (K, K, V))
    return (lambda q, k, v: flash_attn_func(q, k, v, causal=True)), {"q": q, "k": k, "v": v}


def fla_op(family: str) -> Callable:
    """fla's chunked op of `family` (declared in the registry): same signature as ours, no `backend`."""
    return registry.resolve(registry.family(family).fla)


def median_ms(fn: Callable[[], object], repeats: int, device) -> float:
    if torch.device(device).type == "cuda":
        # GPU kernels take microseconds: time many calls with CUDA events, L2 flushed between them
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    return 1e3 * median_seconds(fn, repeats, device)


def time_op(op: Callable, kwargs: dict, repeats: int, device, backward: bool, **extra) -> float:
    if not backward:
        with torch.no_grad():
            return median_ms(lambda: op(**kwargs, **extra), repeats, device)
    leaves = {n: x.detach().requires_grad_(x.is_floating_point()) for n, x in kwargs.items()}

    def step():
        out = op(**leaves, **extra)
        o = out[0] if isinstance(out, tuple) else out
        o.float().sum().backward()
        for x in leaves.values():
            x.grad = None

    return median_ms(step, repeats, device)


FIELDS = ["family", "backend", "chunk_size", "B", "T", "H", "K", "V", "dtype", "device", "fwd_ms", "fwd_bwd_ms", "note"]


def rows_for(args, device, on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Measure every (family, backend, T) cell; `on_row` sees each row as soon as it is measured."""
    dtype = torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    B, H, K, V = args.B, args.H, args.K, args.V
    rows = []
    impls: list[tuple[str, str, Callable, int | None]] = []  # (family, backend, inputs, chunk_size or default)
    shape = {"B": B, "H": H, "K": K, "V": V, "device": device, "dtype": dtype}  # T varies per cell
    on_cuda = torch.device(device).type == "cuda"
    meta = {"B": B, "H": H, "K": K, "V": V, "dtype": str(dtype).replace("torch.", ""), "device": str(device)}
    for family in args.families:
        make = partial(registry.family(family).inputs, **shape)
        for backend in available_backends(family):
            if backend == "triton" and not on_cuda:
                continue  # the interpreter is for correctness tests, not timings
            chunks = args.chunk_sizes if backend != "naive" else [None]  # the step loop has no chunk
            impls.extend((family, backend, make, chunk) for chunk in chunks)
        if on_cuda and registry.family(family).fla is not None and importlib.util.find_spec("fla") is not None:
            impls.append((family, "fla", make, None))
    impls.append(("attention", "sdpa", partial(attention_inputs, **shape), None))
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        impls.append(("attention", "flash_attn", partial(flash_inputs, **shape), None))
    for family, backend, make, chunk in impls:
        limit = args.naive_max_T if backend == "naive" else args.attn_max_T if family == "attention" else None
        for T in args.T:
            row = {"family": family, "backend": backend, "chunk_size": chunk or "", "T": T, **meta}
            if limit is not None and limit < T:
                rows.append(row | {"fwd_ms": "", "fwd_bwd_ms": "", "note": f"skipped: T > {limit}"})
                on_row(rows[-1])
                continue
            op, kwargs = make(T=T)
            if backend == "fla":
                op = fla_op(family)
            extra = {} if family == "attention" or backend == "fla" else {"backend": backend}
            if chunk is not None:
                extra["chunk_size"] = chunk
            fwd = time_op(op, kwargs, args.repeats, device, backward=False, **extra)
            bwd = "" if args.no_backward else time_op(op, kwargs, args.repeats, device, backward=True, **extra)
            rows.append(row | {"fwd_ms": round(fwd, 3), "fwd_bwd_ms": bwd if bwd == "" else round(bwd, 3), "note": ""})
            on_row(rows[-1])
            bwd_text = "-" if bwd == "" else f"{bwd:.2f}"
            label = backend if chunk is None else f"{backend} C={chunk}"
            print(f"{family:>16} {label:>10} T={T:>6}  fwd {fwd:10.2f} ms  fwd+bwd {bwd_text:>10} ms", flush=True)
    return rows


def lookup(rows, family, backend, T, col="fwd_ms"):
    for r in rows:
        if (r["family"], r["backend"], r["T"]) == (family, backend, T) and r[col] != "" and r["chunk_size"] == "":
            return float(r[col])
    return None


def report_targets(rows, fast_backend: str) -> list[str]:
    """The kernel library's goals for chunk_gla at this shape, as ratios (only those whose cells were measured)."""
    naive, fast2k = lookup(rows, "gla", "naive", 2048), lookup(rows, "gla", fast_backend, 2048)
    fast16k, attn16k = lookup(rows, "gla", fast_backend, 16384), lookup(rows, "attention", "sdpa", 16384)
    checks = [
        ("vs naive, forward, T=2048", naive, fast2k, lambda a, b: a / b, ">= 20x", lambda r: r >= 20),
        ("vs causal SDPA, forward, T=16384", attn16k, fast16k, lambda a, b: a / b, ">= 5x", lambda r: r >= 5),
        ("time growth T=2048 -> 16384", fast16k, fast2k, lambda a, b: a / b, "<= 10x", lambda r: r <= 10),
    ]
    if fast_backend == "triton":  # the GPU targets: fla as the anchor, the fastest attention measured
        attn = "flash_attn" if any(r["backend"] == "flash_attn" for r in rows) else "sdpa"
        fla4k = lookup(rows, "gla", "fla", 4096, "fwd_bwd_ms")
        ours4k = lookup(rows, "gla", "triton", 4096, "fwd_bwd_ms")
        checks = [
            ("vs fla chunk_gla, fwd+bwd, T=4096", ours4k, fla4k, lambda a, b: a / b, "<= 1.5x", lambda r: r <= 1.5)
        ]
        for T in sorted({r["T"] for r in rows if r["T"] >= 4096}):
            a, b = lookup(rows, "attention", attn, T, "fwd_bwd_ms"), lookup(rows, "gla", "triton", T, "fwd_bwd_ms")
            checks.append((f"speed-up over {attn}, fwd+bwd, T={T}", a, b, lambda a, b: a / b, "> 1x", lambda r: r > 1))
    lines = []
    for what, a, b, ratio, target, ok in checks:
        if a and b:
            r = ratio(a, b)
            lines.append(f"gla {fast_backend} {what}: {r:.1f}x (target {target}: {'met' if ok(r) else 'MISSED'})")
    return lines


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (c, t)
        for c, t in (("fwd_ms", "forward"), ("fwd_bwd_ms", "forward + backward"))
        if any(r[c] != "" for r in rows)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    axes = axes[0]
    for ax, (col, title) in zip(axes, panels, strict=True):
        for key in sorted({(r["family"], r["backend"], str(r["chunk_size"])) for r in rows}):
            pts = [
                (r["T"], float(r[col]))
                for r in rows
                if (r["family"], r["backend"], str(r["chunk_size"])) == key and r[col] != ""
            ]
            if pts:
                chunk = f" C={key[2]}" if key[2] else ""
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{key[0]} / {key[1]}{chunk}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="ms", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"kernels on {rows[0]['device']} ({rows[0]['dtype']}), B={rows[0]['B']} H={rows[0]['H']} "
        f"K={rows[0]['K']} V={rows[0]['V']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    families = list(registry.families())
    parser.add_argument("--families", nargs="+", default=families, choices=families)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=8)
    parser.add_argument("--K", type=int, default=64)
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--T", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--naive-max-T", type=int, default=2048, help="longest T for the per-step naive loop")
    parser.add_argument("--attn-max-T", type=int, default=16384, help="longest T for full attention")
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="+",
        default=[None],
        help="time the chunked backends at each of these chunk sizes (default: each op's own)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_kernels"))
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "kernels.csv", "w", newline="") as f:  # row by row: a run cut short keeps its cells
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        rows = rows_for(args, args.device, on_row=lambda row: (writer.writerow(row), f.flush()))
    plot(rows, args.out / "kernels.png")
    fast = "triton" if torch.device(args.device).type == "cuda" else "torch"
    print("\n".join(["", "targets (ratios from this run):", *report_targets(rows, fast)]))
    print(f"\nwrote {args.out / 'kernels.csv'} and {args.out / 'kernels.png'}")


if __name__ == "__main__":
    main()
