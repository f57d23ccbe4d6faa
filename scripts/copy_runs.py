"""Copy the small files of every finished (completed or failed) run folder below SRC to DST, without checkpoints:
enough for `zoo-chart`, `scripts/zoology_chart.py` and a resumed sweep (which skips the jobs whose `results.json`
says completed, and the points they settled). A run still going, or cut, is left out: without its checkpoint
it would start again anyway.

    python scripts/copy_runs.py runs/mqar_positions docs/results/mqar_positions/runs   # publish a grid's runs
    python scripts/copy_runs.py docs/results/zoology_mqar/runs runs/zoology_mqar        # and carry it on later
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

FILES = ["results.json", "metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml"]


def copy_runs(src: Path, dst: Path) -> list[Path]:
    copied = []
    for results in sorted(src.rglob("results.json")):
        run = results.parent
        if json.loads(results.read_text()).get("status") not in ("completed", "failed"):
            continue
        out = dst / run.relative_to(src)
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (run / name).exists():
                shutil.copy2(run / name, out / name)
        copied.append(out)
    return copied


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    print(f"{len(copy_runs(args.src, args.dst))} run folders copied to {args.dst}")


if __name__ == "__main__":
    main()
