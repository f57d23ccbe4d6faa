"""Sweeps that survive failures, jobs that evaluate themselves, and the sweep experiments' configs.

The multirun tests start `python -m zoo.train -m` in a subprocess, as a user would, with tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

import zoo
from zoo.config import compose, conf_dir
from zoo.evals.final import wanted
from zoo.io.results import read_results
from zoo.report.chart import main as chart_main
from zoo.train.loop import run_training

# a 2-layer byte-level model on a small slice of the text corpus; the final evaluation exercises all three parts
TINY_TEXT = [
    "model=gla",
    "model.d_model=16",
    "model.head_dim=8",
    "model.n_layers=2",
    "model.attn.layers=[1]",
    "data=text",
    "data.seq_len=32",
    "data.max_bytes=50000",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.warmup_steps=1",
    "train.eval_every=4",
    "train.save_every=4",
    "train.grad_clip=1e30",
    "eval.max_examples=8",
    "eval.final.recall=[passkey]",
    "eval.recall.passkey.lengths=[128]",
    "eval.recall.passkey.depths=[0.5]",
    "eval.recall.passkey.trials=1",
    "eval.recall.passkey.batch_size=1",
    "eval.final.bench.lengths=[16,32]",
    "eval.final.bench.gen_len=2",
    "eval.final.lm_eval=[zoo_mqar]",
    "eval.lm_eval.limit=4",
]

TINY_MQAR = [
    "model=gla",
    "model.d_model=16",
    "model.head_dim=8",
    "model.n_layers=2",
    "model.attn.layers=[]",
    "data.vocab_size=64",
    "data.seq_len=32",
    "data.train_size=64",
    "data.test_size=16",
    "train.batch_size=8",
    "train.max_steps=3",
    "train.warmup_steps=1",
    "eval.batch_size=16",
]


def zoo_train(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "zoo.train", *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A 3-job multirun in which job 1 diverges (lr 1e30 without clipping: NaN loss at step 2)."""
    out = tmp_path_factory.mktemp("sweep")
    proc = zoo_train("-m", f"hydra.sweep.dir={out}", *TINY_TEXT, "train.lr=3e-3,1e30,1e-2", cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr  # Hydra logs to stdout
    assert "job 1 failed, the sweep goes on: FloatingPointError: loss is nan" in log, log[-3000:]
    return out


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(sweep):
    statuses = {job: read_results(sweep / job).get("status") for job in ("0", "1", "2")}
    assert statuses == {"0": "completed", "1": "failed", "2": "completed"}
    failed = read_results(sweep / "1")
    assert failed["error"]["type"] == "FloatingPointError"
    assert failed["error"]["message"].startswith("loss is nan at step")
    assert "raise FloatingPointError" in "\n".join(failed["error"]["traceback"])
    assert failed["metrics"]["params"] > 0  # what was known before the failure stays


def test_sweep_jobs_evaluate_themselves(sweep):
    metrics = read_results(sweep / "2")["metrics"]
    bench = [f"bench/{kind}_tok_s@{n}" for kind in ("prefill", "decode") for n in (16, 32)]
    for name in ("val/ppl", "passkey/accuracy@128", "lm_eval/zoo_mqar/acc", "state/bytes@1024", *bench):
        assert name in metrics, (name, sorted(metrics))
    assert metrics["bench/prefill_tok_s@32"] > 0 and metrics["bench/decode_tok_s@32"] > 0
    assert 0.0 <= metrics["lm_eval/zoo_mqar/acc"] <= 1.0


def test_zoo_chart_tables_and_plots_the_sweep(sweep, tmp_path, capsys):
    assert chart_main([str(sweep), "--out", str(tmp_path)]) == 0
    assert "3 runs" in capsys.readouterr().out
    lines = (tmp_path / "tradeoff.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert len(rows) == 3
    for col in (
        "architecture",
        "attn_layers",
        "params",
        "state_bytes_1k",
        "state_bytes_64k",
        "val_ppl",
        "mqar_acc",
        "passkey_acc@128",
        "prefill_tok_s@32",
        "decode_tok_s@32",
        "status",
        "error",
    ):
        assert col in header, (col, header)
    by_run = {r[header.index("run")]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_run["1"]["status"] == "failed" and by_run["1"]["error"].startswith("FloatingPointError: loss is nan")
    assert by_run["1"]["val_ppl"] == "" and by_run["1"]["mqar_acc"] == ""  # missing, not invented
    assert by_run["0"]["status"] == "completed" and float(by_run["0"]["val_ppl"]) > 1
    assert by_run["0"]["architecture"] == "gla" and by_run["0"]["attn_layers"] == "1"
    assert len((tmp_path / "tradeoff.md").read_text().splitlines()) == 2 + 3
    for png in ("recall_vs_state.png", "quality_vs_recall.png", "throughput.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_a_failed_single_run_exits_with_one_line_and_can_be_resumed(tmp_path):
    proc = zoo_train(f"hydra.run.dir={tmp_path}", *TINY_MQAR, "train.lr=1e30", "train.grad_clip=1e30")
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("zoo-train: error:")]
    assert errors == [errors[0]] and "FloatingPointError: loss is nan" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    results = read_results(tmp_path)
    assert results["status"] == "failed" and results["error"]["type"] == "FloatingPointError"
    # train.resume=true in the same folder, with a sane lr: the old error is history, not the run's status
    proc = zoo_train(f"hydra.run.dir={tmp_path}", *TINY_MQAR, "train.resume=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = read_results(tmp_path)
    assert results["status"] == "completed" and results["error"] is None
    assert [e["type"] for e in results["previous_errors"]] == ["FloatingPointError"]


def test_a_config_error_in_a_sweep_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc = zoo_train("-m", f"hydra.sweep.dir={tmp_path}", *TINY_MQAR, "model.attn.layers=[5],[1]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    failed, done = read_results(tmp_path / "0"), read_results(tmp_path / "1")
    assert failed["status"] == "failed" and failed["error"]["type"] == "ConfigError"
    assert "out of range for n_layers=2" in failed["error"]["message"]
    assert done["status"] == "completed"


def test_final_eval_is_off_by_default_and_writes_its_metrics_when_on(tmp_path):
    assert not wanted(compose([]).eval)
    overrides = [
        *TINY_MQAR,
        "eval.final.recall=[mqar]",
        "eval.recall.mqar.seq_lens=[32]",
        "eval.recall.mqar.num_kv_pairs=[2,4]",
        "eval.recall.mqar.num_examples=8",
        "eval.final.bench.lengths=[8]",
        "eval.final.bench.gen_len=2",
    ]
    metrics = run_training(compose(overrides), tmp_path)
    saved = read_results(tmp_path)
    assert saved["status"] == "completed"
    for name in ("mqar/accuracy@32x2", "mqar/accuracy@32x4", "bench/prefill_tok_s@8", "bench/decode_tok_s@8"):
        assert name in metrics and saved["metrics"][name] == metrics[name], name


def sweep_jobs(experiment: str) -> tuple[list[list[str]], dict]:
    """The override lists of every job of `+experiment=NAME`'s sweep, expanded as Hydra's basic sweeper does."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=[f"+experiment={experiment}"], return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params)
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())  # glob lists a group
        parsed = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = [[]]
    for override in parsed:
        values = list(override.sweep_string_iterator())
        jobs = [job + [f"{override.get_key_element()}={v}"] for job in jobs for v in values]
    return jobs, params


# tradeoff: every conf/model architecture but hybrid_gla, pure and with one attention layer
TRADEOFF_JOBS = 2 * (len(list((conf_dir() / "model").glob("*.yaml"))) - 1)


@pytest.mark.parametrize(("experiment", "n_jobs"), [("hybrid_ratio", 14), ("tradeoff", TRADEOFF_JOBS)])
def test_sweep_experiments_compose_and_every_job_builds(experiment, n_jobs):
    jobs, _ = sweep_jobs(experiment)
    assert len(jobs) == n_jobs
    attn_counts = set()
    for job in jobs:
        cfg = compose([f"+experiment={experiment}", *job])
        assert wanted(cfg.eval), "a sweep experiment evaluates itself"
        with torch.device("meta"):  # shapes only: layer indices and head sizes are checked at build time
            model = zoo.build_model(cfg.model)
        attn_counts.add(model.layer_mixers.count("attn"))
    if experiment == "hybrid_ratio":
        assert attn_counts == {0, 1, 2}
    else:
        assert compose([f"+experiment={experiment}"]).data.name == "text"


def test_the_experiment_files_say_how_to_run_them():
    for name in ("hybrid_ratio", "tradeoff"):
        text = (conf_dir() / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_") and f"zoo-train -m +experiment={name}" in text
        assert "zoo-chart" in text
