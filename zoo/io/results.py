"""The run folder's record: `metrics.jsonl` (one JSON object per logged step) and `results.json`
(`{"metrics": {flat names}, ...}`), which training, evals and benchmarks all merge into."""

from __future__ import annotations

import json
import math
from pathlib import Path

from zoo.io.runs import RESULTS, write_text_atomically

METRICS = "metrics.jsonl"


def _clean(value):
    """JSON has no NaN/inf: store them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_results(run_dir) -> dict:
    path = Path(run_dir) / RESULTS
    return json.loads(path.read_text()) if path.exists() else {"metrics": {}}


def update_results(run_dir, metrics: dict | None = None, **fields) -> dict:
    """Merge `metrics` into `results.json["metrics"]` and `fields` at the top level; atomic write."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    results.setdefault("metrics", {}).update({k: _clean(v) for k, v in (metrics or {}).items()})
    results.update(fields)
    write_text_atomically(run_dir / RESULTS, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def log_metrics(run_dir, record: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_metrics(run_dir, after_step: int) -> None:
    """Drop records logged after `after_step` (a resumed run re-logs them), keeping the file consistent."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
    path = Path(run_dir) / METRICS
    if path.exists():
        write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in records))
