"""`zoo-eval` (also `python -m zoo.eval`): the recall suite and lm-eval tasks on a checkpoint or run folder.

    zoo-eval path=runs/2026-11-27/12-00-00                    # every recall task that fits the model
    zoo-eval path=ckpt tasks=[passkey] eval.recall.passkey.lengths=[1024,1048576]
    zoo-eval path=RUN lm_tasks=[zoo_mqar]                # recall suite, then lm-eval's zoo_mqar
    zoo-eval path=RUN tasks=[] lm_tasks=[zoo_ppl,hellaswag] eval.lm_eval.limit=100   # lm-eval only

The metrics are merged into `results.json` of the run folder (or of the checkpoint folder), the per-cell
recall rows are written to `recall.csv`, and a table is printed. lm-eval metrics are named
`lm_eval/<task>/<metric>` (see `zoo.evals.lm_eval.run.flat_metrics`); settings in `conf/eval/default.yaml` `lm_eval`.
"""

from __future__ import annotations

import csv
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from zoo.config import conf_dir, pick_device
from zoo.errors import CheckpointError, ConfigError
from zoo.evals.recall import run_suite
from zoo.io.checkpoint import from_pretrained
from zoo.io.results import update_results
from zoo.io.runs import locate


def evaluate_folder(
    path, tasks: list[str], recall_cfg: dict, lm_eval_cfg: dict | None = None
) -> tuple[dict, list[dict], list[str]]:
    """Recall `tasks` (none when empty), then the lm-eval tasks of `lm_eval_cfg["tasks"]` (if any), on the
    checkpoint of `path`; each part's metrics are merged into results.json as soon as it is done."""
    checkpoint, results_dir = locate(path)
    lm_tasks = list((lm_eval_cfg or {}).get("tasks") or [])
    device = pick_device(recall_cfg.get("device", "auto") if tasks or not lm_tasks else lm_eval_cfg["device"])
    model = from_pretrained(checkpoint, device=device)
    metrics, rows, notes = {}, [], []
    if tasks:
        metrics, rows, notes = run_suite(model, model.tokenizer, tasks, recall_cfg, device)
        update_results(results_dir, metrics, recall_notes=notes)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(results_dir / "recall.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    if lm_tasks:
        from zoo.evals.lm_eval.adapter import training_seq_len
        from zoo.evals.lm_eval.run import evaluate_model, flat_metrics, lm_eval_record

        # after the recall suite: a dtype other than auto converts the model in place
        results = evaluate_model(model, lm_eval_cfg, max_length=training_seq_len(results_dir))
        lm_metrics = flat_metrics(results)
        update_results(results_dir, lm_metrics, lm_eval=lm_eval_record(results, lm_eval_cfg))
        metrics.update(lm_metrics)
    return metrics, rows, notes


def format_table(metrics: dict, notes: list[str]) -> str:
    lines = ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines + [f"- {n}" for n in notes])


def run(cfg: DictConfig) -> tuple[dict, list[str]]:
    """zoo-eval on a composed `conf/zoo_eval.yaml` config; returns (metrics, notes)."""
    recall_cfg = OmegaConf.to_container(cfg.eval.recall, resolve=True)
    lm_eval_cfg = OmegaConf.to_container(cfg.eval.lm_eval, resolve=True)
    lm_eval_cfg["tasks"] = list(cfg.lm_tasks)
    metrics, _, notes = evaluate_folder(cfg.path, list(cfg.tasks), recall_cfg, lm_eval_cfg)
    return metrics, notes


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="zoo_eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        metrics, notes = run(cfg)
    except Exception as e:
        reason = _download_failure(e) if cfg.lm_tasks else None
        if reason is None and not isinstance(e, (ConfigError, CheckpointError, ValueError)):
            raise
        print(f"zoo-eval: error: {reason or e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(metrics, notes))


def _download_failure(e: Exception) -> str | None:
    """One line when an lm-eval task's dataset could not be downloaded (zoo.evals.lm_eval.run.download_failure)."""
    from zoo.evals.lm_eval.run import download_failure

    return download_failure(e)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
