"""`zoo-chart RUNS_DIR... [--out DIR]` (also `python -m zoo.report`): the quality / recall / cost tradeoff table and
plots of every run folder below the given folders.

A run folder is a folder with `results.json` and `.hydra/config.yaml` (what `zoo-train` writes, single or `-m`).
Writes into `--out` (default: the first folder):
- `tradeoff.csv` and `tradeoff.md`: one row per run: architecture, attention layers (count and indices), params,
  lr, position-table rows, training steps, steps and tokens to the early-stop target, training seconds, state
  bytes at 1k / 64k tokens, validation perplexity, MQAR accuracy, passkey accuracy per length, prefill and decode
  tokens/s per prompt length, status and error (failed runs appear with both);
- `recall_vs_state.png`: each recall measure against the state bytes at 1k tokens (log x);
- `quality_vs_recall.png`: validation perplexity against MQAR accuracy, the Pareto front marked;
- `throughput.png`: prefill and decode tokens/s against the prompt length;
- `mqar_grid.png` (runs with the recall suite's MQAR grid, `mqar/accuracy@<seq_len>x<pairs>`): accuracy per run and
  cell, and the mean over the cells against state bytes and decode tokens/s (the mean over the cells of the run
  with the most; a run that skipped some, e.g. past its position table, is left out of the mean and named);
- `text_recall.png` (text runs): quality (`val/ppl_non_ar`) against recall (`val/ppl_ar`, `val/ppl_repeat`), and
  `val/ppl_repeat` against cost (state bytes at 1k tokens, decode tokens/s at the longest prompt measured);
- `learning_curves.png`: the held-out metrics of every evaluation during training (validation loss, the AR slice's
  perplexity `val/ppl_ar`, `val/ppl_repeat`, MQAR accuracy: each one any run logged) against training tokens
  (steps x batch_size x data.seq_len), one line per run: quality per training token, architectures side by side.
Points are labelled by architecture and attention layers. A metric a run did not record is left blank and a plot
without data is not drawn (the command says which); plots show completed runs only.

MQAR accuracy is the held-out `mqar/accuracy` of a run trained on MQAR, else lm-eval's `lm_eval/zoo_mqar/acc`
(the column `mqar_source` says which); the recall suite's per-cell `mqar/accuracy@<seq_len>x<pairs>` are the
columns `mqar_acc@<seq_len>x<pairs>`.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from zoo.errors import ChartError
from zoo.io.results import read_metrics
from zoo.model.config import ATTENTION_MIXER, ModelConfig

MQAR_METRICS = ("mqar/accuracy", "lm_eval/zoo_mqar/acc")  # in order of preference
STATE_AT = {"state_bytes_1k": 1024, "state_bytes_64k": 65536}
TEXT_METRICS = {  # column -> results.json metric (text runs: zoo.train.loop.evaluate)
    "val_ppl": "val/ppl",
    "val_ppl_ar": "val/ppl_ar",
    "val_ppl_non_ar": "val/ppl_non_ar",
    "val_ppl_repeat": "val/ppl_repeat",
    "val_ppl_repeat_first": "val/ppl_repeat_first",
}
CURVES = ("val/loss", "val/ppl_ar", "val/ppl_repeat", "mqar/accuracy")  # learning_curves.png panels, in order
PER_LENGTH = {  # column prefix -> results.json metric with @<len>
    "passkey_acc": "passkey/accuracy",
    "prefill_tok_s": "bench/prefill_tok_s",
    "decode_tok_s": "bench/decode_tok_s",
}


def find_runs(folders: list[Path]) -> list[Path]:
    """Every run folder below `folders` (a folder itself counts), sorted and without duplicates."""
    runs = {p.parent.resolve() for folder in folders for p in Path(folder).rglob("results.json")}
    return sorted(r for r in runs if (r / ".hydra" / "config.yaml").is_file())


def layer_mixers(cfg, results: dict) -> list[str] | None:
    """The mixer of every layer: as the run recorded it, else resolved from its config (None when the config
    itself is invalid, e.g. a run that failed on a config error)."""
    recorded = results.get("model", {}).get("layers")
    if recorded:
        return list(recorded)
    try:
        return ModelConfig.from_any(cfg.model).layer_names()
    except Exception:  # the run's own error says what is wrong with it
        return None


def _number(value):
    """A metric as a float; non-finite values are stored as strings ("nan") and count as missing."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def run_row(run: Path, root: Path) -> dict:
    """The table row of one run folder; a metric the run did not record is None."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    results = json.loads((run / "results.json").read_text())
    metrics = results.get("metrics", {})
    layers = layer_mixers(cfg, results)
    attn = [i for i, name in enumerate(layers) if name == ATTENTION_MIXER] if layers is not None else None
    error = results.get("error") or {}
    message = (str(error.get("message", "")).strip().splitlines() or [""])[0]
    try:
        name = str(run.relative_to(root.resolve()))
    except ValueError:
        name = str(run)
    row = {
        "run": name,
        "architecture": OmegaConf.select(cfg, "model.name", default="?"),
        "n_layers": OmegaConf.select(cfg, "model.n_layers", default=None),
        "attn_layers": None if attn is None else len(attn),
        "attn_at": None if attn is None else " ".join(map(str, attn)),
        "d_model": OmegaConf.select(cfg, "model.d_model", default=None),
        "params": metrics.get("params"),
        "lr": OmegaConf.select(cfg, "train.lr", default=None),
        "learned_positions": OmegaConf.select(cfg, "model.learned_positions", default=None),
        "train_size": OmegaConf.select(cfg, "data.train_size", default=None),
    }
    row |= {col: metrics.get(f"state/bytes@{n}") for col, n in STATE_AT.items()}
    row |= {col: _number(metrics.get(metric)) for col, metric in TEXT_METRICS.items()}
    source = next((m for m in MQAR_METRICS if _number(metrics.get(m)) is not None), None)
    row["mqar_acc"] = _number(metrics.get(source)) if source else None
    row["mqar_source"] = source
    row |= {col: metrics.get(f"train/{col}") for col in ("steps", "steps_to_target", "tokens_to_target")}
    row["train_s"] = _number(metrics.get("train/time_s"))
    for prefix, metric in PER_LENGTH.items():
        for key, value in metrics.items():
            match = re.fullmatch(re.escape(metric) + r"@(\d+)", key)
            if match:
                row[f"{prefix}@{match.group(1)}"] = _number(value)
    for key, value in metrics.items():
        match = re.fullmatch(r"mqar/accuracy@(\d+)x(\d+)", key)
        if match:
            row[f"mqar_acc@{match.group(1)}x{match.group(2)}"] = _number(value)
    row["status"] = results.get("status", "unknown")
    row["error"] = f"{error.get('type', 'Error')}: {message}" if error else None
    return row


def load_rows(folders: list[Path]) -> list[dict]:
    runs = find_runs(folders)
    if not runs:
        raise ChartError(f"no run folders (results.json + .hydra/config.yaml) below {', '.join(map(str, folders))}")
    return [run_row(run, Path(folders[0])) for run in runs]


def columns(rows: list[dict]) -> list[str]:
    """Fixed columns, then the per-length columns any run has (sorted by length; prefill and decode share their
    lengths, so the two throughput blocks line up), then status and error."""
    fixed = [k for k in rows[0] if k not in ("status", "error") and "@" not in k]

    def lengths(*prefixes):
        return sorted({int(k.split("@")[1]) for r in rows for k in r if k.split("@")[0] in prefixes})

    bench = lengths("prefill_tok_s", "decode_tok_s")
    per_length = mqar_cells(rows)
    per_length += [f"passkey_acc@{n}" for n in lengths("passkey_acc")]
    per_length += [f"{prefix}@{n}" for prefix in ("prefill_tok_s", "decode_tok_s") for n in bench]
    return fixed + per_length + ["status", "error"]


def mqar_cells(rows: list[dict]) -> list[str]:
    """The recall suite's MQAR columns `mqar_acc@<seq_len>x<pairs>` any run has, by sequence length, then pairs."""
    cells = {k for r in rows for k in r if k.startswith("mqar_acc@")}
    return sorted(cells, key=lambda k: tuple(int(n) for n in k.split("@")[1].split("x")))


def label(row: dict) -> str:
    """`arch` for a pure model, `arch +attn[i j]` for a hybrid (the attention indices tell depths apart)."""
    if not row["attn_layers"] or row["attn_layers"] == row["n_layers"]:
        return str(row["architecture"])
    return f"{row['architecture']} +attn[{row['attn_at']}]"


def labels(rows: list[dict]) -> dict[str, str]:
    """`{run: label}`; the run folders' names where two runs would share a label (a sweep over other settings)."""
    by_run = {r["run"]: label(r) for r in rows}
    if len(set(by_run.values())) < len(by_run):
        return {run: run for run in by_run}
    return by_run


def write_csv(rows: list[dict], cols: list[str], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows([{c: "" if r.get(c) is None else r[c] for c in cols} for r in rows])


def _cell(col: str, value) -> str:
    if value is None:
        return ""
    if col.startswith("state_bytes"):
        return f"{value / 2**10:,.1f} KiB" if value < 2**20 else f"{value / 2**20:,.1f} MiB"
    if col == "params":
        return f"{int(value):,}"
    if col.startswith("val_ppl"):
        return f"{value:,.2f}"
    if "tok_s" in col or col == "train_s":
        return f"{value:,.0f}"
    if col.endswith("acc") or col.startswith(("passkey_acc", "mqar_acc@")):
        return f"{value:.3f}"
    text = str(value).replace("|", "\\|")
    return text if len(text) <= 80 else text[:77] + "..."


def markdown(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (recall, perplexity) that no other point beats on both: at least as much recall
    with a lower perplexity, or more recall with no higher perplexity. Sorted by recall."""
    front = []
    for i, (r, p) in enumerate(points):
        beaten = any((r2 >= r and p2 < p) or (r2 > r and p2 <= p) for r2, p2 in points)
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _log_axis(axis) -> None:
    """A log axis that spans a decade or more is labelled at its decades only (matplotlib's minor labels overlap
    there); a shorter one keeps plain-number labels (minor ticks at 1, 2 and 5 times a power of ten, and whatever
    major ticks matplotlib places), so that it still has numbers. Call it after plotting: it reads the range."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    if lo > 0 and hi / lo < 10:
        axis.set_minor_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
    else:
        axis.set_minor_formatter(NullFormatter())


def _finish(fig, path: Path, title: str | None = None) -> None:
    """Title, lay out, write and close a figure (a plot function then returns None: it was drawn)."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _annotate(ax, x, y, text) -> None:
    ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)


def plot_recall_vs_state(rows: list[dict], path: Path) -> str | None:
    """One panel per recall measure (MQAR, passkey at each length): accuracy vs state bytes at 1k tokens."""
    import matplotlib.pyplot as plt

    measures = ["mqar_acc"] + sorted(
        {k for r in rows for k in r if k.startswith("passkey_acc@")}, key=lambda k: int(k.split("@")[1])
    )
    panels = [(m, [r for r in rows if r.get(m) is not None and r["state_bytes_1k"]]) for m in measures]
    panels = [(m, sel) for m, sel in panels if sel]
    if not panels:
        return "no completed run has both a recall metric and state/bytes@1024"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (measure, sel) in zip(axes[0], panels, strict=True):
        for r in sel:
            ax.scatter(r["state_bytes_1k"], r[measure])
            _annotate(ax, r["state_bytes_1k"], r[measure], label(r))
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        ax.set_xlabel("state bytes at 1k tokens (log)")
        ax.set_ylabel(measure.replace("_", " "))
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    return _finish(fig, path, "recall vs state size")


def plot_quality_vs_recall(rows: list[dict], path: Path) -> str | None:
    """Validation perplexity (lower is better) against MQAR accuracy, Pareto front joined by a line."""
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["val_ppl"] is not None and r["mqar_acc"] is not None]
    if not sel:
        return "no completed run has both val/ppl and an MQAR accuracy"
    points = [(r["mqar_acc"], r["val_ppl"]) for r in sel]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(sel):
        ax.scatter(*points[i], color="tab:red" if i in front else "tab:blue", zorder=3)
        _annotate(ax, *points[i], label(r))
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="tab:red", lw=1, label="Pareto front")
    ax.set_xlabel("MQAR accuracy (higher is better)")
    ax.set_ylabel("validation perplexity (lower is better)")
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_xlim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path)


def _decode_speeds(row: dict) -> list[tuple[int, float]]:
    """`[(prompt length, decode tokens/s), ...]` a run measured, by length."""
    return sorted((int(k.split("@")[1]), v) for k, v in row.items() if k.startswith("decode_tok_s@") and v)


def plot_text_recall(rows: list[dict], path: Path) -> str | None:
    """Text models: quality (perplexity off the AR slice, `val/ppl_non_ar`) against recall (`val/ppl_ar` on the
    tokens that complete an n-gram seen earlier, `val/ppl_repeat` on a block's second copy), and recall against
    cost (state bytes at 1k tokens, decode tokens/s at the longest prompt measured). Lower perplexity is better."""
    import matplotlib.pyplot as plt

    def decode_speed(r):
        speeds = _decode_speeds(r)
        return speeds[-1] if speeds else (None, None)

    longest = max((decode_speed(r)[0] or 0 for r in rows), default=0)
    panels = [
        ("val_ppl_non_ar", "val_ppl_ar", "perplexity off the AR slice", "AR-slice perplexity"),
        ("val_ppl_non_ar", "val_ppl_repeat", "perplexity off the AR slice", "second-copy perplexity"),
        ("state_bytes_1k", "val_ppl_repeat", "state bytes at 1k tokens", "second-copy perplexity"),
        ("decode", "val_ppl_repeat", f"decode tokens/s after {longest} tokens", "second-copy perplexity"),
    ]

    def value(r, col):
        return decode_speed(r)[1] if col == "decode" and decode_speed(r)[0] == longest else r.get(col)

    panels = [(x, y, xl, yl, [r for r in rows if value(r, x) and value(r, y)]) for x, y, xl, yl in panels]
    panels = [panel for panel in panels if panel[-1]]
    if not panels:
        return "no completed run has val/ppl_non_ar with val/ppl_ar or val/ppl_repeat (text runs' evaluation)"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), squeeze=False)
    for ax, (x, y, xlabel, ylabel, sel) in zip(axes[0], panels, strict=True):
        for r in sel:
            ax.scatter(value(r, x), value(r, y), color="tab:red" if r["attn_layers"] else "tab:blue")
            _annotate(ax, value(r, x), value(r, y), label(r))
        ax.set_xscale("log")
        ax.set_yscale("log")  # matplotlib's own labels: perplexities often span less than a decade
        _log_axis(ax.xaxis)
        ax.set_xlabel(f"{xlabel} (log)")
        ax.set_ylabel(f"{ylabel} (log)")
        ax.grid(alpha=0.3)
    return _finish(fig, path, "text models: quality vs recall vs cost (red: with attention)")


def mean_cells(rows: list[dict], cells: list[str]) -> tuple[list[str], list[dict], list[dict]]:
    """The cells a mean accuracy is taken over: those of the run with the most cells, so that a run that skipped
    cells (a position table shorter than the grid) does not shrink everyone's mean to its few cells. Returns
    (those cells, the runs that have all of them, the runs left out)."""
    fullest = max(rows, key=lambda r: sum(r.get(c) is not None for c in cells))
    common = [c for c in cells if fullest.get(c) is not None]
    kept = [r for r in rows if all(r.get(c) is not None for c in common)]
    return common, kept, [r for r in rows if r not in kept]


def plot_mqar_grid(rows: list[dict], path: Path) -> str | None:
    """The recall suite's MQAR grid (eval.final.recall: mqar): accuracy per run and (seq_len, kv pairs) cell as a
    heatmap, and each run's mean accuracy over the cells of `mean_cells` against state bytes at 1k tokens and
    decode tokens/s at the longest prompt measured."""
    import matplotlib.pyplot as plt

    cells = mqar_cells(rows)
    sel = [r for r in rows if any(r.get(c) is not None for c in cells)]
    if not sel:
        return "no completed run has the recall suite's mqar/accuracy@<seq_len>x<pairs>"
    names = labels(sel)
    heat_w, height = max(4.0, 0.55 * len(cells) + 2.5), max(3.5, 0.35 * len(sel) + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(heat_w + 10, height), gridspec_kw={"width_ratios": [heat_w, 5, 5]})
    grid = [[r.get(c) if r.get(c) is not None else float("nan") for c in cells] for r in sel]
    image = axes[0].imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, values in enumerate(grid):
        for j, v in enumerate(values):
            if v == v:
                axes[0].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
    axes[0].set_xticks(range(len(cells)), [c.split("@")[1] for c in cells], rotation=60, fontsize=7)
    axes[0].set_yticks(range(len(sel)), [names[r["run"]] for r in sel], fontsize=7)
    axes[0].set_xlabel("MQAR seq_len x kv pairs")
    fig.colorbar(image, ax=axes[0], fraction=0.04)
    common, sel, left_out = mean_cells(sel, cells)
    mean = {r["run"]: sum(r[c] for c in common) / len(common) for r in sel}
    speeds = {r["run"]: dict(_decode_speeds(r)) for r in sel}
    longest = max((max(v, default=0) for v in speeds.values()), default=0)
    for ax, (xlabel, x_of) in zip(
        axes[1:],
        (
            ("state bytes at 1k tokens (log)", lambda r: r.get("state_bytes_1k")),
            (f"decode tokens/s after {longest} tokens (log)", lambda r: speeds[r["run"]].get(longest)),
        ),
        strict=True,
    ):
        for r in sel:
            if x_of(r):
                ax.scatter(x_of(r), mean[r["run"]], color="tab:red" if r["attn_layers"] else "tab:blue")
                _annotate(ax, x_of(r), mean[r["run"]], names[r["run"]])
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"mean MQAR accuracy over {len(common)} cells")
        if left_out:
            ax.set_title("not here (fewer cells): " + ", ".join(names[r["run"]] for r in left_out), fontsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    return _finish(fig, path, "MQAR recall grid (red: with attention)")


def plot_throughput(rows: list[dict], path: Path) -> str | None:
    """Prefill and decode tokens/s against the prompt length, one line per run."""
    import matplotlib.pyplot as plt

    def series(r, prefix):
        return sorted((int(k.split("@")[1]), v) for k, v in r.items() if k.startswith(prefix + "@") and v is not None)

    sel = [r for r in rows if series(r, "prefill_tok_s") or series(r, "decode_tok_s")]
    if not sel:
        return "no completed run has bench/prefill_tok_s@<len> or bench/decode_tok_s@<len>"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, prefix in zip(axes, ("prefill_tok_s", "decode_tok_s"), strict=True):
        for r in sel:
            pts = series(r, prefix)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label(r))
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_axis(ax.xaxis)
        _log_axis(ax.yaxis)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(prefix.replace("_tok_s", " tokens/s"))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _finish(fig, path)


def learning_curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    """`{metric: [(training tokens, value), ...]}` of a run folder's evaluations (metrics.jsonl), for `CURVES`."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    tokens_per_step = OmegaConf.select(cfg, "train.batch_size", default=0) * OmegaConf.select(
        cfg, "data.seq_len", default=0
    )
    curve: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run):
        for metric in CURVES:
            value = _number(record.get(metric))
            if value is not None and "step" in record:
                curve.setdefault(metric, []).append((record["step"] * tokens_per_step, value))
    return curve


def plot_learning_curves(rows: list[dict], curves: dict[str, dict], path: Path) -> str | None:
    """One panel per metric in `CURVES` that any run logged: the metric against training tokens, a line per run."""
    import matplotlib.pyplot as plt

    panels = [m for m in CURVES if any(curves.get(r["run"], {}).get(m) for r in rows)]
    if not panels:
        return "no completed run logged an evaluation (" + ", ".join(CURVES) + ") in metrics.jsonl"
    names = labels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], panels, strict=True):
        for r in rows:
            points = curves.get(r["run"], {}).get(metric)
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=names[r["run"]])
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        if metric not in ("mqar/accuracy", "val/loss"):  # a loss is a log already
            ax.set_yscale("log")
            _log_axis(ax.yaxis)
        ax.set_xlabel("training tokens (log)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return _finish(fig, path, "learning curves")


PLOTS = {
    "recall_vs_state.png": plot_recall_vs_state,
    "quality_vs_recall.png": plot_quality_vs_recall,
    "throughput.png": plot_throughput,
    "text_recall.png": plot_text_recall,
    "mqar_grid.png": plot_mqar_grid,
}


def chart(folders: list[Path], out: Path | None = None) -> tuple[list[dict], list[Path], list[str]]:
    """Write the table and plots of the runs below `folders` into `out` (default: the first folder);
    returns (rows, files written, notes on plots that had no data)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and in tests

    rows = load_rows(folders)
    out = Path(out or folders[0])
    out.mkdir(parents=True, exist_ok=True)
    cols = columns(rows)
    write_csv(rows, cols, out / "tradeoff.csv")
    (out / "tradeoff.md").write_text(markdown(rows, cols))
    written, notes = [out / "tradeoff.csv", out / "tradeoff.md"], []
    done = [r for r in rows if r["status"] == "completed"]
    curves = {r["run"]: learning_curve(run) for r, run in zip(rows, find_runs(folders), strict=True)}
    drawn = {name: draw(done, out / name) for name, draw in PLOTS.items()}
    drawn["learning_curves.png"] = plot_learning_curves(done, curves, out / "learning_curves.png")
    for name, missing in drawn.items():
        if missing:
            notes.append(f"{name} not drawn: {missing}")
        else:
            written.append(out / name)
    return rows, written, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-chart", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders to search for run folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first RUNS_DIR)")
    args = parser.parse_args(argv)
    try:
        rows, written, notes = chart(args.runs, args.out)
    except ChartError as e:
        print(f"zoo-chart: error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out or args.runs[0]) / "tradeoff.md").read_text(), end="")
    for note in notes:
        print(f"- {note}")
    print(f"{len(rows)} runs; wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
