"""The state-tracking chart from a sweep's run folders: accuracy against sequence length, per mixer and task.

    zoo-train -m +experiment=state_tracking model=...            # see conf/experiment/state_tracking.yaml
    python scripts/state_tracking_chart.py runs/state_tracking --out docs/results/state_tracking

Reads every run folder below the given folders (`results.json` + `.hydra/config.yaml`), names each point by its
architecture and the mixer options that tell its variants apart (negative eigenvalues, Householder steps), keeps
the best learning rate per (task, point) (the higher held-out accuracy at the training length, then the fewer
steps), and writes `state_tracking.csv` (every run), `state_tracking.md` (per task: accuracy at each evaluated
length, the last position's accuracy at the longest, steps to the early-stop target and lr) and
`state_tracking.png` (a panel per task: accuracy against length, one line per point).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from omegaconf import OmegaConf

VARIANTS = {"allow_neg_eigval": ("neg. eig.", True), "num_householder": ("n_h={}", None)}


def point_name(cfg, with_depth: bool = False) -> str:
    """`deltanet`, `deltanet (neg. eig.)`, `gated_deltaproduct (n_h=2, neg. eig.)`, ...: the architecture and the
    options of its mixer that the experiment varies; with `with_depth`, its number of layers too (one layer of n_h
    Householder steps is what Siems et al. 2025 vary; two layers are the experiment's default)."""
    mixer = cfg.model.mixers.get(cfg.model.mixer, {}) if cfg.model.get("mixers") else {}
    tags = []
    for key in ("num_householder", "allow_neg_eigval"):
        if key in mixer:
            label, when = VARIANTS[key]
            if when is None:
                tags.append(label.format(mixer[key]))
            elif bool(mixer[key]) == when:
                tags.append(label)
    if with_depth:
        tags.append(f"{cfg.model.n_layers} layer{'s' if cfg.model.n_layers > 1 else ''}")
    return cfg.model.name + (f" ({', '.join(tags)})" if tags else "")


def load_runs(folders: list[Path]) -> list[dict]:
    runs = []
    for results_path in sorted(p for folder in folders for p in folder.rglob("results.json")):
        cfg_path = results_path.parent / ".hydra" / "config.yaml"
        if cfg_path.exists() and (cfg := OmegaConf.load(cfg_path)).data.name == "state_tracking":
            runs.append((results_path, cfg))
    # where the runs differ in depth, every point's name says its depth
    with_depth = len({cfg.model.n_layers for _, cfg in runs}) > 1
    rows = []
    for results_path, cfg in runs:
        results = json.loads(results_path.read_text())
        metrics = results.get("metrics", {})
        task = cfg.data.task + (f"{cfg.data.modulus}" if cfg.data.task == "mod_add" else "")
        acc = {
            int(m.group(1)): v for k, v in metrics.items() if (m := re.fullmatch(r"state_tracking/accuracy@(\d+)", k))
        }
        last = {
            int(m.group(1)): v
            for k, v in metrics.items()
            if (m := re.fullmatch(r"state_tracking/last_accuracy@(\d+)", k))
        }
        rows.append(
            {
                "task": task,
                "point": point_name(cfg, with_depth),
                "lr": float(cfg.train.lr),
                "train_len": int(cfg.data.seq_len),
                "held_out": metrics.get("state_tracking/accuracy"),
                "steps_to_target": metrics.get("train/steps_to_target"),
                "steps": metrics.get("train/steps"),
                "time_s": metrics.get("train/time_s"),
                "accuracy": acc,
                "last": last,
                "status": results.get("status", "unknown"),
                "run": str(results_path.parent),
            }
        )
    return rows


def best_per_point(rows: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for r in rows:
        if r["status"] != "completed" or r["held_out"] is None or not r["accuracy"]:
            continue
        key = (r["task"], r["point"])
        rank = (r["held_out"], -(r["steps_to_target"] or r["steps"] or 0))
        if key not in best or rank > (
            best[key]["held_out"],
            -(best[key]["steps_to_target"] or best[key]["steps"] or 0),
        ):
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["task"], r["point"]))


def table(best: list[dict]) -> str:
    lines = []
    for task in sorted({r["task"] for r in best}):
        rows = [r for r in best if r["task"] == task]
        lengths = sorted({n for r in rows for n in r["accuracy"]})
        lines += [f"### {task} (trained at {rows[0]['train_len']} tokens)", ""]
        lines.append(
            "| point | " + " | ".join(f"acc @{n}" for n in lengths) + f" | last @{lengths[-1]} | steps to target | lr |"
        )
        lines.append("|---|" + "---:|" * (len(lengths) + 3))
        for r in rows:
            cells = [f"{r['accuracy'][n]:.3f}" if n in r["accuracy"] else "-" for n in lengths]
            last = r["last"].get(lengths[-1])
            steps = r["steps_to_target"] if r["steps_to_target"] is not None else f"not reached ({r['steps']})"
            lines.append(
                f"| {r['point']} | "
                + " | ".join(cells)
                + f" | {'-' if last is None else f'{last:.3f}'} | {steps} | {r['lr']:g} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(best: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in best})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in best if r["task"] == task):
            lengths = sorted(r["accuracy"])
            ax.plot(lengths, [r["accuracy"][n] for n in lengths], marker="o", label=r["point"])
        ax.axvline(next(r["train_len"] for r in best if r["task"] == task), color="grey", ls=":", lw=1)
        ax.set(xscale="log", xlabel="sequence length (dotted: training length)", ylabel="accuracy (every position)")
        ax.set_title(f"{task}: accuracy vs length")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/state_tracking_chart"))
    args = parser.parse_args(argv)
    rows = load_runs(args.folders)
    if not rows:
        parser.error(f"no state-tracking runs (results.json + .hydra/config.yaml) below {args.folders}")
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "state_tracking.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "task",
                "point",
                "lr",
                "train_len",
                "held_out",
                "steps_to_target",
                "steps",
                "time_s",
                "length",
                "accuracy",
                "last_accuracy",
                "status",
                "run",
            ]
        )
        for r in rows:
            for n in sorted(r["accuracy"]) or [None]:
                w.writerow(
                    [
                        r["task"],
                        r["point"],
                        r["lr"],
                        r["train_len"],
                        r["held_out"],
                        r["steps_to_target"],
                        r["steps"],
                        r["time_s"],
                        n,
                        r["accuracy"].get(n),
                        r["last"].get(n),
                        r["status"],
                        r["run"],
                    ]
                )
    best = best_per_point(rows)
    text = table(best)
    minutes = sum(r["time_s"] or 0 for r in rows) / 60
    text += f"\n{len(rows)} runs, {minutes:.1f} min of training in all (train/time_s summed over the runs).\n"
    (args.out / "state_tracking.md").write_text(text)
    if best:
        plot(best, args.out / "state_tracking.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
