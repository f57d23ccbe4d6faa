"""scripts/bench_vs_llamacpp.py: the summary reads each class's bench.csv into systems, takes llama.cpp's better
flash-attention setting, and checks the targets with the ratios of the same run."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.helpers import load_script

script = load_script("bench_vs_llamacpp")


def write_class(out: Path, name: str, rows: list[tuple[str, int, float, float]]) -> None:
    folder = out / name / "checkpoint"
    folder.mkdir(parents=True)
    with open(out / name / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arch", "batch", "prompt_len", "prefill_tok_s", "decode_tok_s"])
        writer.writeheader()
        for arch, x, prefill, decode in rows:
            writer.writerow(
                {"arch": arch.format(f=folder), "batch": 1, "prompt_len": x, "prefill_tok_s": prefill,
                 "decode_tok_s": decode}
            )  # fmt: skip
        writer.writerow({"arch": str(folder), "batch": 8, "prompt_len": 512, "prefill_tok_s": 1, "decode_tok_s": 1})
    (out / name / "bench.md").write_text("Machine, measured in this run: matrix-vector 20.5 GB/s, matmul 150 GFLOP/s.")


def test_summary_checks_targets_against_llama_cpps_better_setting(tmp_path):
    write_class(
        tmp_path,
        "llama",
        [
            ("{f}", 8192, 300.0, 14.0),
            ("{f}+int8", 8192, 290.0, 20.0),
            ("{f}+kv_bf16", 8192, 310.0, 30.0),
            ("transformers:{f}", 8192, 250.0, 10.0),
            ("llama.cpp:f32:{f}", 8192, 200.0, 20.0),
            ("llama.cpp:f32+fa:{f}", 8192, 160.0, 8.0),
            ("llama.cpp:q8_0:{f}", 8192, 190.0, 25.0),
        ],
    )
    write_class(tmp_path, "mamba2", [("{f}", 8192, 400.0, 31.0), ("llama.cpp:f32:{f}", 8192, 700.0, 100.0)])
    table = script.summary(tmp_path, ["llama", "mamba2", "bamba"])
    assert "| zoo fp32 | 300.0 | 14.0 |" in table and "| llama.cpp f32 fa | 160.0 | 8.0 |" in table
    assert "matrix-vector 20.5 GB/s, matmul 150 GFLOP/s" in table
    assert "llama prefill @8192: zoo fp32 / llama.cpp f32 = 1.50x, met" in table
    assert "llama decode @8192: zoo fp32 / llama.cpp f32 = 0.70x, missed" in table
    assert "llama decode @8192: zoo fp32+kv_bf16 / llama.cpp f32 = 1.50x, met" in table
    assert "llama decode @8192: zoo int8 / llama.cpp q8_0 = 0.80x, missed" in table
    assert "llama prefill @8192: zoo int8 / llama.cpp q8_0 = 1.53x, met" in table
    assert "mamba2 decode @8192: zoo fp32 / llama.cpp f32 = 0.31x, missed" in table
    # flat state: the zoo's best mamba2 row against llama.cpp's best llama row at 8k (25.0, q8_0)
    assert "| zoo fp32+kv_bf16 | 310.0 | 30.0 |" in table
    assert "decode @8192: mamba2 (zoo fp32) / llama (llama.cpp q8_0) = 1.24x (target 1.5x), missed" in table
    assert "### bamba\n\nno bench.csv" in table
    script.plot(tmp_path, ["llama", "mamba2", "bamba"])
    assert (tmp_path / "vs_llamacpp.png").stat().st_size > 10_000
