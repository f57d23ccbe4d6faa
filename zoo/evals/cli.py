"""`zoo-eval` (also `python -m zoo.eval`): the recall suite and lm-eval tasks on a checkpoint or run folder.

    zoo-eval path=runs/2026-11-27/12-00-00                    # every recall task that fits the model
    zoo-eval path=ckpt tasks=[passkey] eval.recall.passkey.lengths=[1024,1048576]
    zoo-eval path=RUN lm_tasks=[zoo_mqar]                # recall suite, then lm-eval's zoo_mqar
    zoo-eval path=RUN tasks=[] lm_tasks=[zoo_ppl,hellaswag] eval.lm_eval.limit=100   # lm-eval only

The metrics are merged into `results.json` of the run folder (or of the checkpoint folder), the per-cell
recall rows are written to `recall.csv`, and a table is printed. lm-eval metrics are named
`lm_eval/<task>/<metric>` (see `zoo.evals.lm_eval.run.flat_metrics`). Settings: conf/eval/recall/default.yaml
(`eval.recall`) and conf/eval/lm_eval/default.yaml (`eval.lm_eval`).
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from zoo import schemas
from zoo.config import check_command_line, conf_dir, load_option, pick_device, typed
from zoo.errors import ZooError
from zoo.evals.recall import run_suite
from zoo.io.checkpoint import from_pretrained
from zoo.io.results import update_results
from zoo.io.runs import locate
from zoo.schemas import EvalRoot, LMEvalConfig, RecallConfig


def with_trained_task(recall_cfg: RecallConfig, run_dir: Path) -> RecallConfig:
    """`eval.recall.state_tracking` with the task (and modulus) a run folder was trained on (`data=state_tracking`
    in its `.hydra/config.yaml`); unchanged for any other folder, where the task then reports what to set."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        return recall_cfg
    data = OmegaConf.load(saved).get("data") or {}
    if data.get("name") != "state_tracking":
        return recall_cfg
    section = dataclasses.replace(recall_cfg.state_tracking, task=data.get("task"), modulus=data.get("modulus"))
    return dataclasses.replace(recall_cfg, state_tracking=section)


def evaluate_folder(
    path, tasks: list[str], recall_cfg: RecallConfig | Mapping, lm_eval_cfg: LMEvalConfig | None = None
) -> tuple[dict, list[dict], list[str]]:
    """Recall `tasks` (none when empty) with the settings `recall_cfg` (`eval.recall`; a plain dict's sections
    override those of conf/eval/recall/default.yaml), then the lm-eval tasks of `lm_eval_cfg.tasks` (if any), on the
    checkpoint of `path`; each part's metrics are merged into results.json as soon as it is done."""
    if not isinstance(recall_cfg, RecallConfig):
        recall_cfg = load_option("eval/recall", "default", {**recall_cfg, "tasks": list(tasks)})
    checkpoint, results_dir = locate(path)
    if "state_tracking" in tasks and recall_cfg.state_tracking.task is None:
        recall_cfg = with_trained_task(recall_cfg, results_dir)
    lm_tasks = list(lm_eval_cfg.tasks) if lm_eval_cfg is not None else []
    if tasks or not lm_tasks:
        device = pick_device(recall_cfg.device, "eval.recall.device")
    else:
        device = pick_device(lm_eval_cfg.device, "eval.lm_eval.device")
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
    root: EvalRoot = typed(cfg)
    lm_eval_cfg = dataclasses.replace(root.eval.lm_eval, tasks=list(root.lm_tasks))
    metrics, _, notes = evaluate_folder(root.path, list(root.tasks), root.eval.recall, lm_eval_cfg)
    return metrics, notes


schemas.register()  # before @hydra.main composes: the yamls' defaults lists name the schemas


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="zoo_eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        metrics, notes = run(cfg)
    except Exception as e:
        reason = _download_failure(e) if cfg.lm_tasks else None
        if reason is None and not isinstance(e, ZooError):
            raise
        print(f"zoo-eval: error: {reason or e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(metrics, notes))


def _download_failure(e: Exception) -> str | None:
    """One line when an lm-eval task's dataset could not be downloaded (zoo.evals.lm_eval.run.download_failure)."""
    from zoo.evals.lm_eval.run import download_failure

    return download_failure(e)


def main() -> None:
    check_command_line("zoo-eval", "zoo_eval")  # an unknown key or option: one line and exit code 2, before Hydra
    _hydra_main()


if __name__ == "__main__":
    main()
