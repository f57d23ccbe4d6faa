"""The Zoology MQAR chart from a sweep's run folders: accuracy vs model width and vs state bytes.

    zoo-train -m +experiment=zoology_mqar
    python scripts/zoology_chart.py runs/zoology_mqar --out docs/results/zoology_mqar

Reads every run folder below the given folders (`results.json` + `.hydra/config.yaml`), keeps the best
learning rate per (setting, architecture, attention layers, width) as Zoology does (the higher accuracy; on a tie,
the fewer steps to the target), and writes `zoology_mqar.csv` (every run), `zoology_mqar.md` (per setting
(seq_len, kv pairs): best per point, its steps to the early-stop target, and the smallest width at which each
architecture reaches `--threshold` accuracy; per setting and width, the points at the early-stop target, the lrs
run at each point short of it and the architectures not run there, so the grid's state is counted, not written by
hand) and `zoology_mqar.png` (a row per setting: accuracy vs d_model; accuracy vs state bytes at the MQAR sequence
length), one line per architecture, dashed for the hybrid with one attention layer. Widths run at more than one
setting also get a table of accuracy per setting in the markdown and `zoology_mqar_settings.png` (accuracy against
the setting at that width: where a fixed state runs out). Jobs that `train.early_stop.stop_sweeping` skipped
(their point was settled) have no results.json and are not read.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

import zoo


def load_runs(folders: list[Path]) -> list[dict]:
    rows = []
    for results_path in sorted(p for folder in folders for p in folder.rglob("results.json")):
        run = results_path.parent
        cfg_path = run / ".hydra" / "config.yaml"
        if not cfg_path.exists():
            continue
        cfg = OmegaConf.load(cfg_path)
        results = json.loads(results_path.read_text())
        metrics = results.get("metrics", {})
        with torch.device("meta"):  # shapes only: the state size at the MQAR length
            model = zoo.build_model(cfg.model)
        attn = list(cfg.model.attn.layers or [])
        rows.append(
            {
                "arch": cfg.model.name,
                "hybrid": bool(attn) and cfg.model.name != "transformer",
                "attn_layers": attn,
                "d_model": int(cfg.model.d_model),
                "lr": float(cfg.train.lr),
                "setting": (int(cfg.data.seq_len), int(cfg.data.num_kv_pairs)),
                "accuracy": metrics.get("mqar/accuracy"),
                "steps_to_target": metrics.get("train/steps_to_target"),
                "steps": metrics.get("train/steps"),
                "time_s": metrics.get("train/time_s"),
                "state_bytes": model.state_bytes(int(cfg.data.seq_len)),
                "params": metrics.get("params"),
                "status": results.get("status", "unknown"),
                "run": str(run),
            }
        )
    return rows


def best_per_point(rows: list[dict]) -> list[dict]:
    """The best learning rate of each (setting, arch, hybrid, d_model): the higher accuracy, then the fewer steps to
    the target; failed or unfinished runs are not candidates."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["accuracy"] is None or r["status"] != "completed":
            continue
        if r["arch"] == "transformer" and r["attn_layers"]:
            continue  # a transformer "with one attention layer" is the same model
        key = point(r)
        if key not in best or rank(r) > rank(best[key]):
            best[key] = r
    return sorted(best.values(), key=point)


def point(r: dict) -> tuple:
    """A chart point: its runs differ only in the lr."""
    return r["setting"], r["arch"], r["hybrid"], r["d_model"]


def rank(r: dict) -> tuple:
    reached = r["steps_to_target"] is not None
    return (r["accuracy"], reached, -(r["steps_to_target"] or 0))


def label(r: dict) -> str:
    return f"{r['arch']} + attn" if r["hybrid"] else r["arch"]


def write_tables(rows: list[dict], best: list[dict], out: Path, threshold: float) -> None:
    with open(out / "zoology_mqar.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = []
    for setting in sorted({r["setting"] for r in best}):
        lines += setting_table([r for r in best if r["setting"] == setting], setting, threshold)
    for width in compared_widths(best):
        lines += width_table([r for r in best if r["d_model"] == width], width)
    lines += coverage_table(rows, best)
    total = sum(r["time_s"] or 0 for r in rows)
    lines.append(f"{len(rows)} runs, {total / 60:.1f} min of training in all (train/time_s summed over the runs).")
    unfinished = [r for r in rows if r["status"] != "completed"]
    if unfinished:
        lines.append("")
        lines += [f"- not completed: {r['run']} (status: {r['status']})" for r in unfinished]
    (out / "zoology_mqar.md").write_text("\n".join(lines) + "\n")


def setting_table(best: list[dict], setting: tuple[int, int], threshold: float) -> list[str]:
    """Markdown lines of one setting: accuracy (and steps to the target) per width, best lr per point."""
    widths = sorted({r["d_model"] for r in best})
    lines = [
        f"### seq_len {setting[0]}, {setting[1]} kv pairs",
        "",
        "accuracy (steps to the early-stop target, lr) per width, best lr per point",
        "",
        f"| architecture | {' | '.join(f'd={w}' for w in widths)} | state bytes (widest run) | "
        f"smallest d with acc >= {threshold} |",
        "|---|" + "---:|" * (len(widths) + 2),
    ]
    for name in sorted({label(r) for r in best}):
        pts = {r["d_model"]: r for r in best if label(r) == name}
        cells = [cell(pts[w]) if w in pts else "-" for w in widths]
        passing = [w for w in widths if w in pts and pts[w]["accuracy"] >= threshold]
        state = pts[max(pts)]["state_bytes"]
        widest = f"{state:,} (d={max(pts)})"
        lines.append(f"| {name} | {' | '.join(cells)} | {widest} | {passing[0] if passing else 'none'} |")
    return [*lines, ""]


def compared_widths(best: list[dict]) -> list[int]:
    """The widths run at more than one setting: at those the grid shows what a longer sequence with more pairs costs
    each architecture at a fixed width."""
    return sorted(w for w in {r["d_model"] for r in best} if len({r["setting"] for r in best if r["d_model"] == w}) > 1)


def width_table(best: list[dict], width: int) -> list[str]:
    """Markdown lines of one width: accuracy per setting (columns ordered by sequence length, then pairs)."""
    settings = sorted({r["setting"] for r in best})
    lines = [
        f"### d_model {width}: accuracy per setting (seq_len, kv pairs), best lr per point",
        "",
        f"| architecture | {' | '.join(f'{s}' for s in settings)} |",
        "|---|" + "---:|" * len(settings),
    ]
    for name in sorted({label(r) for r in best}):
        pts = {r["setting"]: r for r in best if label(r) == name}
        cells = [f"{pts[s]['accuracy']:.3f}" if s in pts else "-" for s in settings]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return [*lines, ""]


def coverage_table(rows: list[dict], best: list[dict]) -> list[str]:
    """Markdown lines: per setting and width, the points (alone, the transformer among them; + attn) that reached the
    early-stop target, each point short of it with the number of lrs run there (short with fewer lrs than the grid
    sweeps is unfinished, not settled), and the architectures of the grid with no run at that setting and width."""
    lrs_run: dict[tuple, set] = {}
    for r in rows:
        if r["status"] == "completed" and r["accuracy"] is not None:
            lrs_run.setdefault(point(r), set()).add(r["lr"])
    lines = [
        "### Points at the early-stop target, per setting and width",
        "",
        "| setting | d_model | alone at the target | + attn at the target | short of the target (lrs run) | not run |",
        "|---|---:|---:|---:|---|---|",
    ]
    names = sorted({label(r) for r in best})
    for setting, width in sorted({(r["setting"], r["d_model"]) for r in best}):
        here = [r for r in best if (r["setting"], r["d_model"]) == (setting, width)]
        missing = [n for n in names if n not in {label(r) for r in here}]
        counts = []
        for hybrid in (False, True):
            pts = [r for r in here if r["hybrid"] == hybrid]
            counts.append(f"{sum(r['steps_to_target'] is not None for r in pts)} of {len(pts)}")
        short = [
            f"{label(r)} {r['accuracy']:g} ({len(lrs_run[point(r)])})" for r in here if r["steps_to_target"] is None
        ]
        cells = [str(setting), str(width), *counts, ", ".join(short) or "-", ", ".join(missing) or "-"]
        lines.append(f"| {' | '.join(cells)} |")
    reached = sum(r["steps_to_target"] is not None for r in best)
    return [*lines, "", f"{reached} of {len(best)} points at the early-stop target.", ""]


def cell(r: dict) -> str:
    steps = "not reached" if r["steps_to_target"] is None else f"{r['steps_to_target']} steps"
    return f"{r['accuracy']:.3f} ({steps}, lr {r['lr']:g})"


def plot(best: list[dict], path: Path, titles: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted(titles)
    fig, axes = plt.subplots(len(settings), 2, figsize=(13, 5 * len(settings)), squeeze=False)
    archs = sorted({r["arch"] for r in best})
    colors = {a: plt.cm.tab20(i % 20) for i, a in enumerate(archs)}
    for (ax1, ax2), setting in zip(axes, settings, strict=True):
        here = [r for r in best if r["setting"] == setting]
        for name in sorted({label(r) for r in here}):
            pts = sorted((r for r in here if label(r) == name), key=lambda r: r["d_model"])
            style = {"color": colors[pts[0]["arch"]], "linestyle": "--" if pts[0]["hybrid"] else "-", "marker": "o"}
            ax1.plot([r["d_model"] for r in pts], [r["accuracy"] for r in pts], label=name, **style)
            ax2.plot([r["state_bytes"] for r in pts], [r["accuracy"] for r in pts], label=name, **style)
        ax1.set(xscale="log", xlabel="model width d_model", ylabel="MQAR accuracy")
        ax1.set_title(titles[setting], fontsize=9, loc="left")
        ax2.set(xscale="log", xlabel="inference state bytes at the MQAR length", ylabel="MQAR accuracy")
        for ax in (ax1, ax2):
            ax.set_ylim(-0.02, 1.02)
            ax.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_settings(best: list[dict], path: Path, title: str) -> None:
    """Accuracy against the setting at each width run at more than one: a fixed state filling up as the sequence
    and the number of pairs grow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = compared_widths(best)
    fig, axes = plt.subplots(1, len(widths), figsize=(9 * len(widths), 5), squeeze=False)
    archs = sorted({r["arch"] for r in best})
    colors = {a: plt.cm.tab20(i % 20) for i, a in enumerate(archs)}
    for ax, width in zip(axes[0], widths, strict=True):
        here = [r for r in best if r["d_model"] == width]
        settings = sorted({r["setting"] for r in here})
        for name in sorted({label(r) for r in here}):
            pts = sorted((r for r in here if label(r) == name), key=lambda r: r["setting"])
            style = {"color": colors[pts[0]["arch"]], "linestyle": "--" if pts[0]["hybrid"] else "-", "marker": "o"}
            ax.plot([settings.index(r["setting"]) for r in pts], [r["accuracy"] for r in pts], label=name, **style)
        ax.set_xticks(range(len(settings)), [f"seq {t}, {n} pairs" for t, n in settings])
        ax.set(ylim=(-0.02, 1.02), ylabel="MQAR accuracy (best lr)", title=f"d_model {width}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the points stay visible
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: the first folder")
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args(argv)
    rows = load_runs(args.folders)
    if not rows:
        raise SystemExit(f"no run folders (results.json + .hydra/config.yaml) below {[str(f) for f in args.folders]}")
    out = args.out or args.folders[0]
    out.mkdir(parents=True, exist_ok=True)
    best = best_per_point(rows)
    write_tables(rows, best, out, args.threshold)
    titles = {}
    for setting in sorted({r["setting"] for r in best}):
        here = [r for r in rows if r["setting"] == setting]
        first = OmegaConf.load(Path(here[0]["run"]) / ".hydra" / "config.yaml")
        titles[setting] = (
            f"MQAR, seq_len {setting[0]}, {setting[1]} kv pairs, vocab {first.data.vocab_size}, "
            f"{first.model.n_layers} layers, <= {first.train.max_steps} steps\n"
            f"best per point of the lrs run: {', '.join(f'{lr:g}' for lr in sorted({r['lr'] for r in here}))}"
        )
    plot(best, out / "zoology_mqar.png", titles)
    written = [out / "zoology_mqar.csv", out / "zoology_mqar.md", out / "zoology_mqar.png"]
    if compared_widths(best):
        lrs = ", ".join(
            f"{s}: {' '.join(f'{lr:g}' for lr in sorted({r['lr'] for r in rows if r['setting'] == s}))}"
            for s in sorted(titles)
        )
        plot_settings(
            best, out / "zoology_mqar_settings.png", f"MQAR accuracy per setting at a fixed width; lrs run {lrs}"
        )
        written.append(out / "zoology_mqar_settings.png")
    print((out / "zoology_mqar.md").read_text())
    print(f"wrote {', '.join(str(p) for p in written)}")


if __name__ == "__main__":
    main()
