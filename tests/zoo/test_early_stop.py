"""Training to a target: early stopping on a held-out metric, steps and tokens to the target, schedules that do not
spend a run on its decay, and sweeps that resume from what their run folders say."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from zoo.config import compose, typed
from zoo.errors import ConfigError
from zoo.io.results import read_metrics, read_results
from zoo.train.loop import (
    RUN_OPTIONS,
    _matches,
    job_config,
    lr_at,
    resume_sweep_job,
    run_training,
    same_job,
    settled_by,
)

TINY = [
    "model=gla",
    "model.d_model=16",
    "model.head_dim=8",
    "model.n_layers=1",
    "model.attn.layers=[]",
    "data.vocab_size=64",
    "data.seq_len=32",
    "data.train_size=64",
    "data.test_size=16",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "eval.batch_size=16",
]


def train_cfg(*overrides):
    return typed(compose([*TINY, *overrides]).train)


def test_schedules():
    cosine = train_cfg("train.max_steps=100", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1")
    assert lr_at(0, cosine) == pytest.approx(0.1) and lr_at(9, cosine) == pytest.approx(1.0)
    assert lr_at(55, cosine) == pytest.approx(0.55) and lr_at(100, cosine) == pytest.approx(0.1)
    wsd = train_cfg(
        "train.schedule=wsd",
        "train.max_steps=100",
        "train.warmup_steps=10",
        "train.lr=1.0",
        "train.min_lr_ratio=0.1",
        "train.decay_fraction=0.2",
    )
    assert [lr_at(s, wsd) for s in (10, 50, 79)] == [1.0, 1.0, 1.0]  # stable until the last 20 steps
    assert lr_at(90, wsd) == pytest.approx(0.55) and lr_at(100, wsd) == pytest.approx(0.1)
    constant = train_cfg("train.schedule=constant", "train.max_steps=100", "train.lr=1.0")
    assert {lr_at(s, constant) for s in (1, 50, 100)} == {1.0}
    with pytest.raises(ConfigError, match="valid schedules: cosine, wsd, constant"):
        lr_at(5, train_cfg("train.schedule=linear"))


def run(tmp_path, *overrides):
    cfg = compose([*TINY, "train.max_steps=12", "train.eval_every=2", "train.save_every=100", *overrides])
    return run_training(cfg, tmp_path), read_results(tmp_path)


def test_early_stop_stops_at_the_first_evaluation_past_the_threshold(tmp_path):
    # accuracy >= 0 holds at every evaluation: the first one (step 2) stops the run
    metrics, results = run(tmp_path, "train.early_stop.metric=mqar/accuracy", "train.early_stop.threshold=0.0")
    assert metrics["train/steps"] == 2 and metrics["train/steps_to_target"] == 2
    assert metrics["train/tokens_to_target"] == 2 * 8 * 32  # steps x batch x sequence length
    assert results["status"] == "completed" and results["metrics"]["train/steps_to_target"] == 2
    assert max(r["step"] for r in read_metrics(tmp_path)) == 2
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["meta"]
    assert state["step"] == 2 and state["steps_to_target"] == 2  # the stopped model is the checkpoint


def test_patience_needs_that_many_evaluations_in_a_row(tmp_path):
    metrics, _ = run(
        tmp_path,
        "train.early_stop.metric=mqar/accuracy",
        "train.early_stop.threshold=0.0",
        "train.early_stop.patience=3",
    )
    assert metrics["train/steps"] == 6 and metrics["train/steps_to_target"] == 6


def test_a_target_never_reached_is_null_and_the_budget_is_spent(tmp_path):
    metrics, results = run(
        tmp_path, "train.early_stop.metric=mqar/loss", "train.early_stop.mode=min", "train.early_stop.threshold=-1"
    )
    assert metrics["train/steps"] == 12 and metrics["train/steps_to_target"] is None
    assert results["metrics"]["train/tokens_to_target"] is None
    _, plain = run(tmp_path / "plain")
    assert "train/steps_to_target" not in plain["metrics"]  # no target: nothing to report


def test_an_unknown_metric_names_the_evaluated_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"early_stop.metric='val/ppl' is not evaluated; evaluated: \['mqar/acc"):
        run(tmp_path, "train.early_stop.metric=val/ppl")


# -- resumable sweeps ------------------------------------------------------------------------------------------

SWEEP = [*TINY, "train.max_steps=400", "train.eval_every=400", "train.save_every=5", "train.log_every=1"]


def sweep(out, *extra, wait_for=None):
    """`zoo-train -m` over 3 learning rates into `out`; with `wait_for=(job, step)` the process is killed as soon
    as that job has logged that step (a sweep cut in the middle of a job)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "zoo.train", "-m", f"hydra.sweep.dir={out}", *SWEEP, "train.lr=1e-3,2e-3,3e-3"]
    proc = subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if wait_for is None:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, log[-3000:]
        return log
    job, step = wait_for
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        records = read_metrics(out / str(job)) if (out / str(job)).is_dir() else []
        if any(r.get("step", 0) >= step for r in records):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return None


def test_a_rerun_sweep_skips_completed_jobs_and_resumes_a_cut_one(tmp_path):
    out = tmp_path / "grid"
    sweep(out, wait_for=(1, 20))
    assert read_results(out / "0")["status"] == "completed"
    cut = read_results(out / "1")
    assert cut["status"] == "running" and not (out / "2").exists(), cut
    done_before = (out / "0" / "metrics.jsonl").read_text()
    # job 0 as if written before train.grad_accum_steps existed: still the same job, and its folder's config
    # stays the one it ran with, though Hydra rewrites the file when the rerun starts the job
    recorded = json.loads((out / "0" / "results.json").read_text())
    del recorded["config"]["train"]["grad_accum_steps"]
    (out / "0" / "results.json").write_text(json.dumps(recorded))
    log = sweep(out)
    kept = OmegaConf.load(out / "0" / ".hydra" / "config.yaml")
    assert kept.train.lr == 1e-3 and "grad_accum_steps" not in kept.train
    assert "job 0: completed in" in log and "skipped" in log
    assert "job 1: continues from the checkpoint" in log and "resumed from" in log
    assert (out / "0" / "metrics.jsonl").read_text() == done_before  # the completed job was not touched
    for job in ("0", "1", "2"):
        results = read_results(out / job)
        assert results["status"] == "completed" and results["metrics"]["train/steps"] == 400, (job, results)
    steps = [r["step"] for r in read_metrics(out / "1") if "train/loss" in r]
    assert steps == list(range(1, 401))  # resumed at its checkpoint, each step logged once


def test_a_sweep_folder_of_another_config_is_left_alone(tmp_path):
    out = tmp_path / "grid"
    (out / "0").mkdir(parents=True)
    (out / "0" / "results.json").write_text(json.dumps({"status": "completed", "config_sha": "0" * 16}))
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "zoo.train",
        "-m",
        f"hydra.sweep.dir={out}",
        *TINY,
        "train.max_steps=2",
        "train.lr=1e-3,2e-3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "holds a run of another config; left as it is" in proc.stdout + proc.stderr
    assert read_results(out / "0") == {"status": "completed", "config_sha": "0" * 16}
    assert read_results(out / "1")["status"] == "completed"
    assert OmegaConf.load(out / "1" / ".hydra" / "config.yaml").train.lr == 2e-3


def test_a_point_at_its_target_is_not_swept_further(tmp_path):
    """`train.early_stop.stop_sweeping=[train.lr]`: once one lr of a point reached the target, the point's other lrs
    are skipped; a point that never reached it tries them all. Here the target (mqar/loss <= threshold) is reached
    at the first evaluation with threshold 100 and never with -1."""
    out = tmp_path / "grid"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "zoo.train", "-m", f"hydra.sweep.dir={out}", *TINY, "train.max_steps=2"]
    cmd += ["train.eval_every=1", "train.early_stop.metric=mqar/loss", "train.early_stop.mode=min"]
    cmd += ["train.early_stop.stop_sweeping=[train.lr]", "train.early_stop.threshold=100,-1", "train.lr=1e-3,2e-3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for job in range(4):
        overrides = OmegaConf.load(out / str(job) / ".hydra" / "overrides.yaml")
        jobs[tuple(sorted(overrides))] = read_results(out / str(job))
    reached = {k: v for k, v in jobs.items() if "train.early_stop.threshold=100" in k}
    missed = {k: v for k, v in jobs.items() if "train.early_stop.threshold=-1" in k}
    assert sorted(str(r.get("status")) for r in reached.values()) == ["None", "completed"], reached  # one ran, one not
    assert all(r["status"] == "completed" and r["metrics"]["train/steps_to_target"] is None for r in missed.values())
    assert "reached the target at this point, skipped" in proc.stdout + proc.stderr
    bad = [*cmd[:-3], f"hydra.sweep.dir={tmp_path / 'bad'}", "train.early_stop.stop_sweeping=[train.nope]"]
    bad = subprocess.run(bad, capture_output=True, text=True, env=env, timeout=300)
    assert "stop_sweeping names 'train.nope', which is not a config key" in bad.stdout + bad.stderr


def _recorded(cfg, reached=True, drop=(), **values):
    """A completed run's results.json as a run of `cfg` would have written it, with `values` set in its config
    (`model__d_model=32` sets model.d_model) and the dotted keys `drop` absent from it (options that did not
    exist when the run was written)."""
    config = job_config(cfg)
    for key, value in [*((k.replace("__", "."), v) for k, v in values.items()), *((k, None) for k in drop)]:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if key in drop:
            del node[leaf]
        else:
            node[leaf] = value
    return {"status": "completed", "config": config, "metrics": {"train/steps_to_target": 100 if reached else None}}


def _write(run_dir, results):
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))


def test_a_recorded_config_without_an_option_added_since_is_the_same_job(tmp_path):
    """Options added to conf/ after a run was written (by the project rule, defaulting to the old behaviour) do not
    make a finished grid's runs another config's; a changed value does."""
    cfg = compose([*TINY, "train.early_stop.stop_sweeping=[train.lr]"])
    _write(tmp_path / "same", _recorded(cfg, drop=["model.attn.num_heads", "eval.repeat"]))
    assert not resume_sweep_job(cfg, tmp_path / "same", 0, tmp_path)  # completed: skipped
    _write(tmp_path / "other", _recorded(cfg, model__d_model=32))
    assert not resume_sweep_job(cfg, tmp_path / "other", 1, tmp_path)  # another config: left alone
    assert read_results(tmp_path / "other")["config"]["model"]["d_model"] == 32
    assert same_job({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3})
    assert not same_job({"a": {"b": 1}}, {"a": {"b": 2}})
    assert not same_job({"a": [1, 2]}, {"a": [1, 3]})


def test_a_run_under_other_run_options_is_the_same_job(tmp_path):
    """Threads, compile and the other RUN_OPTIONS change how a job runs, not what it trains: a grid rerun with a
    faster option skips its completed runs, resumes its cut ones and sees its settled points; other keys still
    make another job."""
    cfg = compose([*TINY, "train.lr=1e-3", "train.early_stop.stop_sweeping=[train.lr]"])
    faster = compose([*TINY, "train.lr=1e-3", "train.early_stop.stop_sweeping=[train.lr]"])
    faster.train.num_threads, faster.train.compile, faster.train.save_every = 1, "blocks", 7
    assert _matches(_recorded(cfg), faster, []) is True
    _write(tmp_path / "done", _recorded(cfg))
    assert not resume_sweep_job(faster, tmp_path / "done", 0, tmp_path / "elsewhere")  # completed: skipped
    cut = _recorded(cfg) | {"status": "running"}
    _write(tmp_path / "cut", cut)
    assert resume_sweep_job(faster, tmp_path / "cut", 1, tmp_path / "elsewhere")  # the same job: it runs on
    _write(tmp_path / "grid" / "lr0.003", _recorded(cfg, train__lr=3e-3))
    assert settled_by(faster, tmp_path / "grid", tmp_path / "grid" / "mine") == tmp_path / "grid" / "lr0.003"
    train_keys = {f"train.{k}" for k in job_config(cfg)["train"]}
    assert {"train.num_threads", "train.compile", "train.log"} <= set(RUN_OPTIONS) < train_keys  # marked in the schema
    faster.train.eval_every = 3  # not a run option: when the target is checked
    assert _matches(_recorded(cfg), faster, []) is False
    assert not resume_sweep_job(faster, tmp_path / "cut", 2, tmp_path / "elsewhere")  # another job's folder


def test_a_point_is_settled_by_a_run_that_differs_only_in_the_swept_keys(tmp_path):
    cfg = compose([*TINY, "train.lr=1e-3", "train.early_stop.stop_sweeping=[train.lr]"])
    _write(tmp_path / "lr0.01", _recorded(cfg, train__lr=1e-2, reached=False))
    assert settled_by(cfg, tmp_path, tmp_path / "mine") is None  # not at the target: the point is open
    _write(tmp_path / "d32", _recorded(cfg, model__d_model=32, train__lr=3e-3))
    assert settled_by(cfg, tmp_path, tmp_path / "mine") is None  # another point
    _write(tmp_path / "lr0.003", _recorded(cfg, train__lr=3e-3, drop=["model.attn.num_heads"]))
    assert settled_by(cfg, tmp_path, tmp_path / "mine") == tmp_path / "lr0.003"
    assert resume_sweep_job(cfg, tmp_path / "mine", 2, tmp_path) is False
