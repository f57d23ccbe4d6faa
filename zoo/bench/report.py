"""zoo-bench's report: efficiency against the machine's bounds, CSV / markdown / PNG, the README's performance
claims checked on the cells a run measured, and the flat `results.json` metrics of one model's rows."""

from __future__ import annotations

import csv
from pathlib import Path


def with_efficiency(rows: list[dict], limits: dict) -> list[dict]:
    """Fractions of the machine's bounds: decode at batch 1 against weight bytes / bandwidth, prefill against
    2 FLOPs per non-embedding parameter per token / matmul throughput."""
    for r in rows:
        if r.get("decode_tok_s") and r.get("batch") == 1:
            r["decode_bw_frac"] = r["weight_bytes"] * r["decode_tok_s"] / (limits["matvec_gb_s"] * 1e9)
        if r.get("prefill_tok_s"):
            r["prefill_flop_frac"] = 2 * r["flop_params"] * r["prefill_tok_s"] / (limits["matmul_gflop_s"] * 1e9)
    return rows


COLUMNS = [
    "arch",
    "d_model",
    "n_layers",
    "params",
    "batch",
    "prompt_len",
    "gen_len",
    "prefill_tok_s",
    "ttft_s",
    "decode_tok_s",
    "peak_mib",
    "cache_bytes",
    "decode_bw_frac",
    "prefill_flop_frac",
    "prefill_s",
    "decode_s",
    "weight_bytes",
    "flop_params",
    "memory_method",
    "device",
    "dtype",
    "note",
]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def fmt(value, spec: str) -> str:
    return "" if value is None or value == "" else format(value, spec)


def markdown(rows: list[dict], limits: dict, settings: str) -> str:
    lines = [
        f"Settings: {settings}. Machine, measured in this run: matrix-vector {limits['matvec_gb_s']:.1f} GB/s, "
        f"matmul {limits['matmul_gflop_s']:.0f} GFLOP/s.",
        "",
    ]
    for size in dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows):
        lines += [
            f"### d_model {size[0]}, {size[1]} layers",
            "",
            "| arch | params | batch | prompt | prefill tok/s | TTFT s | decode tok/s | peak MiB | cache MiB "
            "| decode % of BW bound | prefill % of FLOP bound | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            if (r["d_model"], r["n_layers"]) != size:
                continue
            cache = r.get("cache_bytes")
            lines.append(
                f"| {r['arch']} | {fmt(r.get('params', 0) / 1e6, '.1f')}M | {r.get('batch', '')} | "
                f"{r.get('prompt_len', '')} | {fmt(r.get('prefill_tok_s'), '.0f')} | {fmt(r.get('ttft_s'), '.2f')} | "
                f"{fmt(r.get('decode_tok_s'), '.1f')} | {fmt(r.get('peak_mib'), '.0f')} | "
                f"{fmt(cache / 2**20 if cache is not None else None, '.1f')} | "
                f"{fmt(100 * r['decode_bw_frac'] if 'decode_bw_frac' in r else None, '.0f')} | "
                f"{fmt(100 * r['prefill_flop_frac'] if 'prefill_flop_frac' in r else None, '.0f')} | "
                f"{r.get('note', '')} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows))
    panels = [
        ("prefill_tok_s", "prefill tokens/s"),
        ("decode_tok_s", "decode tokens/s (batch 1)"),
        ("peak_mib", "peak memory (MiB)"),
    ]
    fig, axes = plt.subplots(len(sizes), 3, figsize=(16, 4.5 * len(sizes)), squeeze=False)
    for row_axes, size in zip(axes, sizes, strict=True):
        for ax, (col, title) in zip(row_axes, panels, strict=True):
            for arch in dict.fromkeys(r["arch"] for r in rows):
                pts = [
                    (r["prompt_len"], r[col])
                    for r in rows
                    if r["arch"] == arch
                    and r.get(col) is not None
                    and (r["d_model"], r["n_layers"]) == size
                    and r.get("batch") == 1
                ]
                if pts:
                    style = "--" if arch.startswith("hf_") else "-"
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=arch)
            ax.set(xscale="log", yscale="log", xlabel="prompt length (tokens)", title=f"{title}, d{size[0]}x{size[1]}")
            ax.grid(True, which="both", alpha=0.3)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell(rows, arch, size, length, col, batch=1):
    """One measured value: `col` of `arch` at `size` (d_model, n_layers), prompt `length`, `batch`."""
    for r in rows:
        key = (r["arch"], r["d_model"], r["n_layers"], r.get("prompt_len"), r.get("batch"))
        if key == (arch, *size, length, batch):
            return r.get(col)
    return None


def targets(rows: list[dict]) -> list[str]:
    """The performance claims of the README's inference table, checked on the cells this run measured (a missing
    cell is said so)."""
    return [
        line for size in dict.fromkeys((r["d_model"], r["n_layers"]) for r in rows) for line in targets_at(rows, size)
    ]


def targets_at(rows: list[dict], size: tuple) -> list[str]:
    out, tag = [], f"d{size[0]}x{size[1]}"

    def check(what, value, goal, ok):
        verdict = (
            "not measured" if value is None else f"{value:.2f} (target {goal}: {'met' if ok(value) else 'MISSED'})"
        )
        out.append(f"{tag} {what}: {verdict}")

    def at(arch, x, col):
        return cell(rows, arch, size, x, col)

    def ratio(a, b, x, col, xb=None):
        top, bottom = at(a, x, col), at(b, xb or x, col)
        return None if top is None or bottom is None else top / bottom

    lens = sorted({r["prompt_len"] for r in rows if (r["d_model"], r["n_layers"]) == size and r.get("prompt_len")})
    if not lens:
        return out
    short, long = lens[0], lens[-1]
    ref = 1024 if 1024 in lens else short  # the memory target's "1k"
    check(
        f"gla decode @8192 / @{short}", ratio("gla", "gla", 8192, "decode_tok_s", short), ">= 0.85", lambda r: r >= 0.85
    )
    check(
        "gla / transformer decode @8192",
        ratio("gla", "transformer", 8192, "decode_tok_s"),
        ">= 1.5",
        lambda r: r >= 1.5,
    )
    check(
        "gla / transformer prefill @8192", ratio("gla", "transformer", 8192, "prefill_tok_s"), ">= 1", lambda r: r >= 1
    )
    check(
        "transformer / hf_llama_static decode @8192",
        ratio("transformer", "hf_llama_static", 8192, "decode_tok_s"),
        ">= 0.9",
        lambda r: r >= 0.9,
    )
    for ours, peer in (("mamba2", "hf_mamba2"), ("gated_deltanet+attn[1]", "hf_olmo_hybrid")):
        check(f"{ours} / {peer} prefill @8192", ratio(ours, peer, 8192, "prefill_tok_s"), ">= 2", lambda r: r >= 2)
        check(f"{ours} / {peer} decode @8192", ratio(ours, peer, 8192, "decode_tok_s"), ">= 1", lambda r: r >= 1)
    # flat-state architectures of ours: the same cache bytes at the shortest and the longest prompt
    archs = dict.fromkeys(r["arch"] for r in rows if (r["d_model"], r["n_layers"]) == size)
    flat = [
        a
        for a in archs
        if not a.startswith("hf_")
        and at(a, short, "cache_bytes") is not None
        and at(a, long, "cache_bytes") == at(a, short, "cache_bytes")
    ]
    for arch in flat:
        fracs = [at(arch, x, "decode_bw_frac") for x in lens if at(arch, x, "decode_bw_frac") is not None]
        check(f"{arch} decode, min fraction of BW bound", min(fracs) if fracs else None, ">= 0.6", lambda r: r >= 0.6)
        check(
            f"{arch} prefill @8192, fraction of FLOP bound",
            at(arch, 8192, "prefill_flop_frac"),
            ">= 0.5",
            lambda r: r >= 0.5,
        )
        check(
            f"{arch} peak memory @{long} / @{ref}",
            ratio(arch, arch, long, "peak_mib", ref),
            "<= 1.1",
            lambda r: r <= 1.1,
        )
    return out


def results_metrics(rows: list[dict]) -> dict:
    """Flat results.json names (docs/architecture.md) for one model's rows (batch 1)."""
    metrics = {}
    for r in rows:
        if r.get("batch") == 1 and r.get("prefill_tok_s") is not None:
            metrics[f"bench/prefill_tok_s@{r['prompt_len']}"] = r["prefill_tok_s"]
            metrics[f"bench/decode_tok_s@{r['prompt_len']}"] = r["decode_tok_s"]
            metrics[f"state/bytes@{r['prompt_len']}"] = r["cache_bytes"]
    return metrics
