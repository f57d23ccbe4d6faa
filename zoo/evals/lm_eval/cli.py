"""`python -m zoo.lm_eval ...`: lm-eval's own command line (`run`, `ls`, `validate`) with the `zoo` model type
registered and the offline task folder `conf/lm_eval_tasks` always on the include path (next to any
`--include_path` of yours), plus `make-data`.

    python -m zoo.lm_eval run --model zoo --model_args pretrained=runs/qs1 --tasks zoo_mqar --limit 100
    python -m zoo.lm_eval run --model zoo --model_args pretrained=ckpt,max_length=8192 --tasks zoo_passkey_4k
    python -m zoo.lm_eval ls tasks                     # lm-eval's own subcommands, offline tasks included
    python -m zoo.lm_eval make-data [--out DIR]        # write the offline tasks' JSONL files

When a task's dataset cannot be downloaded (no network, `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`), the command
says so in one line and names the offline tasks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.evals.lm_eval.adapter import register
from zoo.evals.lm_eval.run import download_failure, include_paths
from zoo.evals.lm_eval.tasks import DATA_ENV, data_dir, make_data, tasks_dir


def _make_data_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zoo.lm_eval make-data",
        description=f"Write the offline lm-eval tasks' JSONL files (default folder: ${DATA_ENV}, else "
        "~/.cache/hybrid_zoo/lm_eval). Tasks read them from there and generate them when missing.",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"folder to write into (default: {data_dir()})")
    args = parser.parse_args(argv)
    for task, path, rows in make_data(args.out):
        print(f"{task}: {rows} documents -> {path}")
    if args.out is not None and args.out.resolve() != data_dir().resolve():
        print(f"tasks read from {data_dir()}; set {DATA_ENV}={args.out} to use these files")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["make-data"]:
        return _make_data_cli(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "python -m zoo.lm_eval make-data [--out DIR]: write the offline tasks' data files; everything else is "
            f"lm-eval's command line with the `zoo` model type and the offline tasks of {tasks_dir()}:\n"
        )
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    # lm-eval's cli_evaluate, with the offline task folder added to whatever --include_path the user gave
    setup_logging()
    register()
    sys.argv = ["python -m zoo.lm_eval", *argv]  # HarnessCLI parses sys.argv (and inserts `run` when omitted)
    parser = HarnessCLI()
    args = parser.parse_args()
    explicit = any(a == "--device" or a.startswith("--device=") for a in argv) or getattr(args, "config", None)
    if getattr(args, "model", None) == "zoo" and not explicit:
        args.device = "auto"  # else lm-eval fills in cuda:0, which is an error without CUDA: `auto` picks the device
    if hasattr(args, "include_path"):
        args.include_path = include_paths(args.include_path)
    try:
        parser.execute(args)
    except Exception as e:
        reason = download_failure(e)
        if reason is None:
            raise
        print(f"zoo.lm_eval: error: {reason}", file=sys.stderr)
        return 2
    return 0
