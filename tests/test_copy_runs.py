"""scripts/copy_runs.py: finished run folders' small files are copied, checkpoints and unfinished runs are not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def load_script():
    path = Path(__file__).resolve().parent.parent / "scripts" / "copy_runs.py"
    spec = importlib.util.spec_from_file_location("copy_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finished_runs_are_copied_without_their_checkpoints(tmp_path):
    for name, status in (("a", "completed"), ("b", "failed"), ("c", "running")):
        run = tmp_path / "src" / "grid" / name
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "model.safetensors").write_bytes(b"x" * 100)
        (run / "results.json").write_text(json.dumps({"status": status}))
        (run / ".hydra" / "config.yaml").write_text("model: {}\n")
        (run / "metrics.jsonl").write_text("{}\n")
    copied = load_script().copy_runs(tmp_path / "src", tmp_path / "dst")
    assert [p.name for p in copied] == ["a", "b"]
    files = sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*") if p.is_file())
    assert files == [f"grid/{r}/{f}" for r in "ab" for f in (".hydra/config.yaml", "metrics.jsonl", "results.json")]
