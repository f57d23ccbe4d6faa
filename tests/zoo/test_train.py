"""Training: a short MQAR run learns, resume continues exactly, bad configs stop before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import zoo
from tests.helpers import TINY_HYBRID_MQAR, experiment_overrides, interrupted_run
from zoo.config import compose, conf_dir
from zoo.io.results import read_metrics, read_results
from zoo.train.loop import run_training

TINY = [
    *TINY_HYBRID_MQAR,
    "data.train_size=512",
    "data.test_size=64",
    "train.batch_size=16",
    "train.warmup_steps=5",
    "train.lr=3e-3",
    "train.log_every=1",
    "eval.batch_size=64",
]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def test_short_mqar_run_reduces_loss_and_writes_the_run_folder(tmp_path):
    cfg = compose([*TINY, "train.max_steps=60", "train.eval_every=30", "train.save_every=30"])
    metrics = run_training(cfg, tmp_path)
    curve = losses(tmp_path)
    first, last = sum(curve[s] for s in range(1, 6)) / 5, sum(curve[s] for s in range(56, 61)) / 5
    assert last < first - 0.3, (first, last)
    results = read_results(tmp_path)
    assert results["status"] == "completed"
    for key in ("params", "mqar/accuracy", "state/bytes@1024", "state/bytes@65536", "train/steps"):
        assert key in results["metrics"], key
    assert metrics["train/steps"] == 60
    assert {p.name for p in (tmp_path / "checkpoint").iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "trainer_state.safetensors",
        "trainer_state.json",
    }


def test_resume_continues_exactly(tmp_path):
    """Kill a run after its step-20 checkpoint; the resumed run's losses equal an uninterrupted run's."""
    overrides = [*TINY, "train.max_steps=40", "train.eval_every=20", "train.save_every=20"]
    run_training(compose(overrides), tmp_path / "straight")
    interrupted_run(compose(overrides), tmp_path / "resumed", 27)
    run_training(compose([*overrides, "train.resume=true"]), tmp_path / "resumed")
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 41))  # the steps after the checkpoint were re-logged once
    for step in range(21, 41):
        assert resumed[step] == straight[step], (step, resumed[step], straight[step])


def zoo_train(tmp_path, *overrides):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "zoo.train", f"hydra.run.dir={tmp_path}", *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.mixer=nope"], "unknown mixer 'nope'; valid mixers:"),
        (["model.attn.layers=[9]"], "model.attn.layers entry 9 is out of range for n_layers=8"),
        (["model.head_dim=48"], "does not divide"),
        (["data.seq_len=32", "data.num_kv_pairs=16"], "num_kv_pairs"),
        (
            ["+train.lrr=1"],
            "unknown config key 'train.lrr'; valid keys under 'train': activation_checkpointing, batch_size, betas,",
        ),
        (
            ["model.learned_positions=64", "eval.final.bench.lengths=[32,64]", "eval.final.bench.gen_len=16"],
            "eval.final.bench.lengths [64] plus gen_len=16 are past model.learned_positions=64: set",
        ),
    ],
    ids=["mixer", "attn-index", "head-size", "mqar-fit", "train-typo", "bench-past-positions"],
)
def test_bad_config_stops_with_one_line(tmp_path, overrides, message):
    proc = zoo_train(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("zoo-train: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()  # before step 0


def test_unknown_architecture_lists_the_choices(tmp_path):
    proc = zoo_train(tmp_path, "model=nope")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("zoo-train: error: unknown option model=nope; valid options for 'model': based,")
    assert "hybrid_gla" in line and "schema" not in line


@pytest.mark.slow
def test_quickstart_meets_its_target(tmp_path):
    proc = zoo_train(tmp_path, "+experiment=quickstart")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert metrics["mqar/accuracy"] >= 0.9, metrics


def test_short_text_run_reports_validation_perplexity(tmp_path):
    cfg = compose(
        [
            "model=gla",
            "model.d_model=32",
            "model.head_dim=8",
            "model.n_layers=1",
            "data=text",
            "data.seq_len=64",
            "data.max_bytes=200000",
            "train.batch_size=8",
            "train.max_steps=30",
            "train.warmup_steps=5",
            "train.lr=3e-3",
            "train.eval_every=30",
            "eval.max_examples=32",
        ]
    )
    metrics = run_training(cfg, tmp_path)
    assert metrics["val/ppl"] < 257  # better than a uniform guess over the byte vocabulary
    results = read_results(tmp_path)
    assert results["backend"] == {"gla": "torch"} and results["device"] == "cpu"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_builds(experiment, token_corpus):
    cfg = compose(experiment_overrides(experiment, token_corpus))
    model = zoo.build_model(cfg.model)
    assert model.config.vocab_size >= cfg.data.vocab_size
