"""`zoo-eval` (also `python -m zoo.eval`): the recall suite on a checkpoint or run folder.

    zoo-eval path=runs/2026-11-27/12-00-00                    # every task that fits the model
    zoo-eval path=ckpt tasks=[passkey] eval.recall.passkey.lengths=[1024,1048576]

The metrics are merged into `results.json` of the run folder (or of the checkpoint folder), the per-cell
rows are written to `recall.csv`, and a table is printed.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from zoo.checkpoint import CheckpointError, from_pretrained
from zoo.config import conf_dir
from zoo.mixers import ConfigError
from zoo.recall import run_suite
from zoo.results import update_results
from zoo.train import pick_device


def locate(path) -> tuple[Path, Path]:
    """`(checkpoint folder, folder whose results.json receives the metrics)` for a run or checkpoint folder."""
    path = Path(path)
    if (path / "checkpoint" / "config.json").exists():
        return path / "checkpoint", path
    if (path / "config.json").exists():
        return path, path
    raise CheckpointError(f"{path} is neither a run folder (with checkpoint/) nor a checkpoint folder (config.json)")


def evaluate_folder(path, tasks: list[str], recall_cfg: dict) -> tuple[dict, list[dict], list[str]]:
    checkpoint, results_dir = locate(path)
    device = pick_device(recall_cfg.get("device", "auto"))
    model = from_pretrained(checkpoint, device=device)
    metrics, rows, notes = run_suite(model, model.tokenizer, tasks, recall_cfg, device)
    update_results(results_dir, metrics, recall_notes=notes)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(results_dir / "recall.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    return metrics, rows, notes


def format_table(metrics: dict, notes: list[str]) -> str:
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines + [f"- {n}" for n in notes])


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="zoo_eval")
def _hydra_main(cfg: DictConfig) -> None:
    recall_cfg = OmegaConf.to_container(cfg.eval.recall, resolve=True)
    try:
        metrics, _, notes = evaluate_folder(cfg.path, list(cfg.tasks), recall_cfg)
    except (ConfigError, CheckpointError, ValueError) as e:
        print(f"zoo-eval: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(metrics, notes))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
