"""zoo-bench: a tiny run writes its table, CSV and plot with measured (not made-up) cells; budgets and failures
become rows with reasons; `path=` merges the flat bench metrics into a run folder's results.json."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import load_script
from zoo.bench.cli import run
from zoo.bench.measure import time_cell
from zoo.bench.report import targets, with_efficiency

TINY = {
    "archs": ["gla", "transformer"],
    "attn_layers": None,
    "peers": [],
    "sizes": [{"d_model": 32, "n_layers": 2, "head_dim": 16}],
    "vocab_size": 64,
    "prompt_lens": [16, 48],
    "gen_tokens": 4,
    "batch_sizes": [1, 2],
    "batch_max_prompt": 16,
    "prefill_chunk": 16,
    "device": "cpu",
    "dtype": "auto",
    "memory_budget_gb": 4.0,
    "time_budget_s": 300,
    "seed": 0,
    "isolate": False,  # in-process: a spawned process per architecture costs seconds (one test keeps it)
    "quantize": ["none"],
    "kv_cache": ["none"],
    "llamacpp": [],
    "llamacpp_flash_attn": [False],
    "llamacpp_converter": None,
}


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_csv_markdown_and_plot(tmp_path):
    rows, checks = run(dict(TINY), tmp_path)
    # batch 1 at both lengths, batch 2 only up to batch_max_prompt
    cells = {(r["arch"], r["batch"], r["prompt_len"]) for r in rows}
    assert cells == {(a, b, x) for a in ("gla", "transformer") for b, x in ((1, 16), (1, 48), (2, 16))}
    for r in rows:
        assert r["note"] == ""
        assert r["prefill_tok_s"] == pytest.approx(r["batch"] * r["prompt_len"] / r["prefill_s"])
        assert r["decode_tok_s"] == pytest.approx(r["batch"] * 4 / r["decode_s"])
        assert r["peak_mib"] > 0 and r["cache_bytes"] > 0
    gla = {r["prompt_len"]: r["cache_bytes"] for r in rows if r["arch"] == "gla" and r["batch"] == 1}
    tf = {r["prompt_len"]: r["cache_bytes"] for r in rows if r["arch"] == "transformer" and r["batch"] == 1}
    assert gla[16] == gla[48] and tf[48] > tf[16]  # flat recurrent state vs a growing KV cache
    written = read_rows(tmp_path / "bench.csv")
    assert len(written) == len(rows) and float(written[0]["decode_bw_frac"]) > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| gla |" in table and "matrix-vector" in table and "gla peak memory" in table
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert any(c.startswith("d32x2 gla decode @8192") and c.endswith("not measured") for c in checks)
    # the README's condensed table from the same CSV: one row per architecture, the measured decode tok/s
    condensed = load_script("bench_readme_table").tables(written).splitlines()
    gla_line = next(line for line in condensed if line.startswith("| gla |"))
    batch2 = next(r for r in rows if r["arch"] == "gla" and r["batch"] == 2)
    assert gla_line.endswith(f"| {batch2['decode_tok_s']:.0f} |") and "**d_model 32, 2 layers**" in condensed[0]


def test_budgets_and_failures_are_rows_with_reasons(tmp_path):
    cfg = dict(TINY) | {
        "archs": ["transformer", "no_such_arch"],
        "batch_sizes": [1],
        "memory_budget_gb": 1e-6,
        "isolate": True,
    }
    rows, _ = run(cfg, tmp_path)
    notes = {(r["arch"], r.get("prompt_len")): r["note"] for r in rows}
    assert notes[("transformer", 16)].startswith("skipped: cache at 16 tokens needs")
    failed = notes[("no_such_arch", None)]
    assert failed.startswith("failed:") and "no_such_arch" in failed


def test_efficiency_fractions_follow_their_definitions():
    rows = [{"batch": 1, "decode_tok_s": 10.0, "prefill_tok_s": 100.0, "weight_bytes": 4e8, "flop_params": 1e8}]
    (r,) = with_efficiency(rows, {"matvec_gb_s": 20.0, "matmul_gflop_s": 200.0})
    assert r["decode_bw_frac"] == pytest.approx(4e8 * 10 / 20e9)  # seconds at the bound / seconds measured
    assert r["prefill_flop_frac"] == pytest.approx(2e8 * 100 / 200e9)


def test_targets_compare_the_named_cells():
    base = {"d_model": 8, "n_layers": 1, "batch": 1}
    rows = [
        base | {"arch": "gla", "prompt_len": 512, "decode_tok_s": 10.0, "cache_bytes": 5, "peak_mib": 100.0},
        base
        | {
            "arch": "gla",
            "prompt_len": 8192,
            "decode_tok_s": 9.0,
            "cache_bytes": 5,
            "peak_mib": 105.0,
            "prefill_tok_s": 50.0,
        },
        base
        | {"arch": "transformer", "prompt_len": 8192, "decode_tok_s": 3.0, "cache_bytes": 9, "prefill_tok_s": 60.0},
    ]
    checks = "\n".join(targets(rows))
    assert "gla decode @8192 / @512: 0.90 (target >= 0.85: met)" in checks
    assert "gla / transformer decode @8192: 3.00 (target >= 1.5: met)" in checks
    assert "gla / transformer prefill @8192: 0.83 (target >= 1: MISSED)" in checks
    assert "gla peak memory @8192 / @512: 1.05 (target <= 1.1: met)" in checks
    assert "transformer peak" not in checks  # the KV cache grows: not a flat-state architecture


class _OneSlowStep:
    """A runner whose decode steps take 1 ms, except one that takes 200 ms (a step preempted on a busy machine)."""

    def state_bytes(self, seq_len, batch_size=1):
        return 0

    def prefill(self, ids, total_len):
        return 0, torch.zeros(ids.shape[0], 8)

    def step(self, cache, ids, position):
        time.sleep(0.2 if cache == 3 else 0.001)
        return cache + 1, torch.zeros(ids.shape[0], 8)


def test_decode_speed_follows_the_median_step_not_one_slow_step():
    cell = time_cell(_OneSlowStep(), vocab=8, batch=1, length=4, gen=16, device=torch.device("cpu"), seed=0)
    assert cell["decode_s"] < 0.1  # 16 steps at ~1 ms; the total of all 16 would be over 0.2 s
    assert cell["decode_tok_s"] == pytest.approx(16 / cell["decode_s"])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_step_clock_times_each_step(device):
    from zoo.bench.measure import StepClock

    device = torch.device(device)
    clock = StepClock(device)
    for i in range(3):
        time.sleep(0.05 if i == 1 else 0.0)  # host time between two marks: on CUDA the events see the gap too
        torch.ones(64, 64, device=device).sum()
        clock.mark()
    seconds = clock.seconds()
    assert len(seconds) == 3 and min(seconds) >= 0
    assert seconds[1] >= 0.04 and seconds[1] == max(seconds)


_PEAK_PROBE = """
import torch
from zoo.bench.measure import PeakMemory
with PeakMemory(torch.device("cpu")) as small:
    torch.ones(1024).sum()
with PeakMemory(torch.device("cpu")) as big:
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del x
print(big.mib - small.mib)
"""


def test_peak_memory_sees_an_allocation():
    # in a fresh process: inside the test session, memory that earlier tests freed can stay resident in the
    # allocator and take the 64 MiB without the RSS growing, which PeakMemory then rightly does not see
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) > 48


def test_path_merges_bench_metrics_into_results_json(tmp_path):
    import zoo
    from zoo.config import compose

    overrides = ["model=gla", "model.d_model=32", "model.n_layers=2", "model.head_dim=16", "data.vocab_size=64"]
    model = zoo.build_model(compose(overrides).model)
    model.save_pretrained(tmp_path / "run" / "checkpoint")
    cfg = dict(TINY) | {"batch_sizes": [1]}
    run(cfg, tmp_path / "bench", path=str(tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert {"bench/prefill_tok_s@48", "bench/decode_tok_s@16", "state/bytes@48"} <= set(metrics)
    assert metrics["bench/decode_tok_s@48"] > 0


@pytest.mark.skipif(sys.platform != "linux", reason="console script smoke test")
def test_zoo_bench_command_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "zoo.bench",
        "bench.archs=[gla]",
        "bench.peers=[]",
        "bench.prompt_lens=[16]",
        "bench.sizes=[{d_model:32,n_layers:1,head_dim:16}]",
        "bench.vocab_size=64",
        "bench.gen_tokens=2",
        "bench.batch_sizes=[1]",
        f"out={tmp_path}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_rows(tmp_path / "bench.csv")[0]["arch"] == "gla"


def test_hf_peers_run_at_our_shapes(tmp_path):
    pytest.importorskip("transformers", reason="peer rows need transformers (pip install 'hybrid-zoo[bench]')")
    cfg = dict(TINY) | {
        "archs": [],
        "peers": ["hf_llama_static", "hf_mamba2", "hf_olmo_hybrid"],
        "batch_sizes": [1],
        "sizes": [{"d_model": 64, "n_layers": 2}],
        "prompt_lens": [16],
    }
    rows, _ = run(cfg, tmp_path)
    by_arch = {r["arch"]: r for r in rows}
    assert set(by_arch) == {"hf_llama_static", "hf_mamba2", "hf_olmo_hybrid", "gated_deltanet+attn[1]"}
    for r in by_arch.values():
        assert r["note"] == "" and r["decode_tok_s"] > 0, r
    assert by_arch["hf_llama_static"]["cache_bytes"] == 2 * 20 * 2 * 64 * 4  # K and V, 20 tokens, 2 layers, fp32


def test_hybrid_attention_layers_keep_their_depth_fractions():
    """hybrid_gla puts attention at [2, 6] of 8 layers: at 4 layers that is [1, 3] (said in the row's note),
    at its own depth nothing moves."""
    from zoo.bench.cli import scaled_attn_layers

    layers, note = scaled_attn_layers("hybrid_gla", 4)
    assert layers == [1, 3] and "[2, 6] of 8" in note
    assert scaled_attn_layers("hybrid_gla", 8) == (None, "")
    assert scaled_attn_layers("gla", 4) == (None, "")


def test_path_to_a_transformers_checkpoint_also_times_transformers_on_the_same_weights(tmp_path):
    """zoo-bench path=<transformers folder>: the zoo's import and transformers' own model of the same checkpoint,
    timed in one run; results.json gets the zoo's numbers only."""
    transformers = pytest.importorskip("transformers", reason="the transformers row needs transformers")
    config = transformers.Mamba2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=8, head_dim=8, state_size=16, n_groups=1
    )
    transformers.Mamba2ForCausalLM(config).save_pretrained(tmp_path / "ckpt")
    cfg = dict(TINY) | {"batch_sizes": [1], "prompt_lens": [16]}
    rows, _ = run(cfg, tmp_path / "bench", path=str(tmp_path / "ckpt"))
    by_arch = {r["arch"].split("/")[0]: r for r in rows}
    assert set(by_arch) == {"", "transformers:"}, [r["arch"] for r in rows]
    for r in rows:
        assert r["note"] == "" and r["decode_tok_s"] > 0 and (r["d_model"], r["n_layers"]) == (32, 2), r
    assert rows[1]["arch"] == f"transformers:{tmp_path / 'ckpt'}"
    metrics = json.loads((tmp_path / "ckpt" / "results.json").read_text())["metrics"]
    assert metrics["bench/decode_tok_s@16"] == rows[0]["decode_tok_s"]
