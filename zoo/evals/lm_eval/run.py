"""lm-eval runs on a loaded model (zoo-eval, the end-of-training evaluation): the offline task folder on the include
path, lm-eval's results as flat `results.json` metrics, and one-line errors for datasets that cannot be
downloaded."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from zoo.evals.lm_eval.adapter import ZooLM, register
from zoo.evals.lm_eval.tasks import offline_task_names, tasks_dir
from zoo.schemas import LMEvalConfig

# exception types (by name, anywhere in the cause chain) that mean "the Hub could not be reached"
_OFFLINE_ERRORS = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "MaxRetryError",
    "NameResolutionError",
}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def download_failure(exc: BaseException) -> str | None:
    """A one-line explanation when `exc` comes from a dataset that could not be downloaded, else None."""
    offline_env = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    for e in _causes(exc):
        name = type(e).__name__
        text = str(e).splitlines()[0] if str(e) else name
        if name in _OFFLINE_ERRORS or ("offline" in str(e).lower() and offline_env):
            break
        if name == "DatasetNotFoundError" and offline_env:
            break
    else:
        return None
    offline = ", ".join(offline_task_names())
    mode = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if offline_env else ""
    return (
        f"a task's dataset could not be downloaded{mode}: {text[:200]}. Offline tasks that need no network: "
        f"{offline} (from {tasks_dir()})"
    )


def include_paths(user: str | Sequence[str] | None) -> list[str]:
    """The offline task folder first, then the user's include path(s), each once."""
    paths = [str(tasks_dir())] + ([user] if isinstance(user, str) else list(user or []))
    seen, out = set(), []
    for p in paths:
        key = str(Path(p).expanduser().resolve())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def evaluate_model(model, cfg: LMEvalConfig, max_length: int | None = None) -> dict:
    """Run lm-eval on a loaded `HybridLM` with the settings `eval.lm_eval` (`cfg`, conf/eval/lm_eval/default.yaml);
    returns lm-eval's results dict. `max_length` is used when `cfg.max_length` is null (zoo-eval passes the run's
    training `data.seq_len`); the offline task folder is always on the include path."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    register()
    lm = ZooLM.from_model(
        model,
        device=cfg.device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length or max_length,
        max_gen_toks=cfg.max_gen_toks,
        prefill_chunk=cfg.prefill_chunk,
    )
    paths, metadata, tasks = include_paths(cfg.include_path), dict(cfg.metadata or {}), list(cfg.tasks)
    # indexing lm-eval's thousands of task yamls takes seconds: only when a task is not in the include paths
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if not all(manager.match_tasks([t]) for t in tasks):
        manager = TaskManager(include_path=paths, metadata=metadata)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        task_manager=manager,
        log_samples=False,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results


def flat_metrics(results: dict) -> dict[str, float]:
    """lm-eval's `results["results"]` as flat results.json names: `lm_eval/<task>/<metric>`.

    lm-eval names a metric `<metric>,<filter>`; the default filter `none` is dropped and any other one is kept as
    `<metric>@<filter>` (`lm_eval/gsm8k/exact_match@strict-match`). Standard errors are kept as
    `<metric>_stderr`, when lm-eval computed one (it reports "N/A" otherwise, which is left out), as are groups'
    aggregated metrics. Non-numeric entries (aliases, sample counts) are left out."""
    flat = {}
    for task, entries in results.get("results", {}).items():
        for key, value in entries.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filt = key.split(",", 1)
            name = metric if filt == "none" else f"{metric}@{filt}"
            flat[f"lm_eval/{task}/{name}"] = float(value)
    return flat


def lm_eval_record(results: dict, cfg: LMEvalConfig) -> dict:
    """What results.json keeps about the lm-eval run besides the metrics: settings, task versions, sample counts."""
    config = {
        "tasks": list(cfg.tasks),
        "limit": cfg.limit,
        "num_fewshot": cfg.num_fewshot,
        "metadata": dict(cfg.metadata),
        "max_length": cfg.max_length,
    }
    config["max_length"] = results.get("config", {}).get("max_length", config["max_length"])
    return {"config": config, "versions": results.get("versions", {}), "n-samples": results.get("n-samples", {})}
