"""scripts/bench_step_chunks.py at a tiny shape: one row per (model, chunk size), the chunked op called at each
chunk size (also where the experiment sets a torch_chunk_size), the CSV."""

from __future__ import annotations

import csv

import pytest

import kernels
from tests.helpers import load_script


def test_one_row_per_chunk_size_each_run_at_its_chunk(tmp_path, monkeypatch):
    seen, real = [], kernels.chunk_gated_delta_rule

    def spy(*a, chunk_size, **kw):
        seen.append(chunk_size)
        return real(*a, chunk_size=chunk_size, **kw)

    monkeypatch.setattr(kernels, "chunk_gated_delta_rule", spy)
    args = ["--models", "gated_deltanet", "--chunk-sizes", "16", "8", "--repeats", "1", "--batch-size", "2"]
    args += ["--d-model", "32", "--overrides", "data.seq_len=32", "data.num_kv_pairs=2", "--out", str(tmp_path)]
    rows = load_script("bench_step_chunks").main(args)
    assert [(r["model"], r["chunk_size"]) for r in rows] == [("gated_deltanet", 16), ("gated_deltanet", 8)]
    assert rows[0]["speedup"] == 1.0 and all(r["step_ms"] > 0 for r in rows)
    assert set(seen) == {16, 8}  # the experiment's torch_chunk_size (16) does not override the chunk under test
    assert seen.count(8) == seen.count(16) == 2 * 2  # two layers, a warm-up step and a timed one per chunk
    written = list(csv.DictReader((tmp_path / "step_chunks.csv").read_text().splitlines()))
    assert [w["chunk_size"] for w in written] == ["16", "8"]


def test_a_model_without_a_chunked_mixer_is_refused_by_name():
    args = ["--models", "transformer", "--chunk-sizes", "16", "--repeats", "1", "--batch-size", "2", "--d-model", "32"]
    with pytest.raises(SystemExit, match="model=transformer: its mixer attn has no chunk_size option"):
        load_script("bench_step_chunks").main([*args, "--overrides", "data.seq_len=32", "data.num_kv_pairs=2"])
