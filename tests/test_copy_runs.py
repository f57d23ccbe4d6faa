"""scripts/copy_runs.py: finished run folders' small files are copied, checkpoints and unfinished runs are not."""

from __future__ import annotations

import json

from tests.helpers import load_script


def test_finished_runs_are_copied_without_their_checkpoints(tmp_path):
    for name, status in (("a", "completed"), ("b", "failed"), ("c", "running")):
        run = tmp_path / "src" / "grid" / name
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "model.safetensors").write_bytes(b"x" * 100)
        (run / "results.json").write_text(json.dumps({"status": status}))
        (run / ".hydra" / "config.yaml").write_text("model: {}\n")
        (run / "metrics.jsonl").write_text("{}\n")
    copied = load_script("copy_runs").copy_runs(tmp_path / "src", tmp_path / "dst")
    assert [p.name for p in copied] == ["a", "b"]
    files = sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*") if p.is_file())
    assert files == [f"grid/{r}/{f}" for r in "ab" for f in (".hydra/config.yaml", "metrics.jsonl", "results.json")]
