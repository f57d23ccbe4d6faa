"""What a `zoo-train` job leaves behind when it fails, so that a sweep survives its failures.

A failed job (an exception, a NaN loss, out of memory, a config error) writes `status: failed` and the error
into its `results.json`; `zoo-chart` then shows it as a failed row. In a Hydra multirun (`zoo-train -m`) the
job returns after recording it and the sweep goes on; a single run still exits non-zero (zoo/train/loop.py).
"""

from __future__ import annotations

import gc
import os
import traceback
from pathlib import Path

import torch

from zoo.errors import CheckpointError, ConfigError
from zoo.io.results import read_results, update_results

TRACEBACK_LINES = 12  # the last lines of the traceback kept in results.json: enough to see where it broke


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message` (a config error's message alone, as zoo-train always printed it)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    if isinstance(exc, (ConfigError, CheckpointError)):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def record_failure(run_dir, exc: BaseException) -> str:
    """Write `status: failed` and `error: {type, message, traceback}` into `run_dir/results.json`, keeping the
    metrics already there (params, evaluations before the failure). Returns the one-line description.
    Under torchrun only rank 0 writes (ranks share the run folder, and results.json is rank 0's)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return one_line(exc)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    error = {"type": type(exc).__name__, "message": str(exc), "traceback": lines[-TRACEBACK_LINES:]}
    update_results(run_dir, status="failed", error=error)
    return one_line(exc)


def clear_failure(run_dir) -> None:
    """Before a job (re)starts in `run_dir` (train.resume=true after a failure): the old error moves to
    `previous_errors`, so that a run that then completes does not carry it as its own."""
    results = read_results(run_dir)
    if results.get("error") and int(os.environ.get("RANK", "0")) == 0:
        previous = [*results.get("previous_errors", []), results["error"]]
        update_results(run_dir, error=None, previous_errors=previous)


def release_memory() -> None:
    """Free what a failed job left behind before the next job of the same process starts (an out-of-memory
    job would otherwise make the next one fail too). Call it outside the `except` block: inside it, the
    traceback still references the failed job's frames and tensors."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
