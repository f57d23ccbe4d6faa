"""scripts/bench_kernels.py at a tiny shape: one row per (backend, chunk size) with `--chunk-sizes`, the step loop
once, and the CSV naming each row's chunk."""

from __future__ import annotations

import csv

from tests.helpers import load_script


def test_chunk_sizes_give_one_row_each(tmp_path):
    args = ["--families", "kda", "--chunk-sizes", "8", "16", "--B", "1", "--H", "1", "--K", "4", "--V", "4"]
    args += ["--T", "24", "--repeats", "1", "--attn-max-T", "0", "--out", str(tmp_path)]
    load_script("bench_kernels").main(args)
    rows = list(csv.DictReader((tmp_path / "kernels.csv").read_text().splitlines()))
    cells = {(r["family"], r["backend"], r["chunk_size"]) for r in rows}
    assert cells == {("kda", "torch", "8"), ("kda", "torch", "16"), ("kda", "naive", ""), ("attention", "sdpa", "")}
    assert all(float(r["fwd_bwd_ms"]) > 0 for r in rows if r["family"] == "kda")
    assert (tmp_path / "kernels.png").exists()
