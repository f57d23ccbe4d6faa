"""State tracking (zoo/data/state_tracking.py): group tables and labels against brute force, determinism, the
settings that cannot work, `data=state_tracking`, and the evaluation past the training length."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from zoo.data import build_data
from zoo.data.state_tracking import build_state_tracking_splits, group, state_tracking_examples
from zoo.data.tokenizer import IntTokenizer
from zoo.errors import ConfigError
from zoo.evals.recall import run_suite
from zoo.model.lm import LMOutput


def brute_running_products(task: str, seq: list[int], modulus: int | None = None) -> list[int]:
    """Running products computed from the definitions, not from a table."""
    if task in ("s3", "s5"):
        perms = list(itertools.permutations(range(int(task[1:]))))
        state, out = tuple(range(len(perms[0]))), []
        for x in seq:
            p = perms[x]
            state = tuple(p[state[i]] for i in range(len(state)))  # first the product so far, then x
            out.append(perms.index(state))
        return out
    m = 2 if task == "parity" else modulus
    return [int(s) % m for s in np.cumsum(seq)]


@pytest.mark.parametrize(
    "task, modulus, order", [("parity", None, 2), ("mod_add", 5, 5), ("s3", None, 6), ("s5", None, 120)]
)
def test_labels_are_the_running_products(task, modulus, order):
    g = group(task, modulus)
    assert g.order == order
    x, y = state_tracking_examples(task, 20, 33, vocab_size=order, seed=3, modulus=modulus)
    assert x.shape == y.shape == (20, 33) and x.dtype == torch.long
    assert x.min() >= 0 and x.max() < order
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        assert row_y == brute_running_products(task, row_x, modulus)


def test_symmetric_group_table_is_a_group():
    t = group("s5").table
    e = 0  # the identity permutation comes first
    assert (t[e] == np.arange(120)).all() and (t[:, e] == np.arange(120)).all()
    assert all(sorted(row) == list(range(120)) for row in t)  # a Latin square: every element has an inverse
    rng = np.random.default_rng(0)
    a, b, c = rng.integers(0, 120, (3, 500))
    assert (t[t[a, b], c] == t[a, t[b, c]]).all()  # associative
    assert (t[a, b] != t[b, a]).any()  # and not commutative


def test_splits_are_deterministic_per_seed_and_independent():
    kw = dict(task="s3", modulus=None, vocab_size=6, seq_len=16, train_size=40, test_size=10)
    one, two, other = (build_state_tracking_splits(**kw, seed=s) for s in (0, 0, 1))
    assert torch.equal(one["train"][0], two["train"][0]) and torch.equal(one["test"][1], two["test"][1])
    assert not torch.equal(one["train"][0], other["train"][0])
    assert not torch.equal(one["train"][0][:10], one["test"][0])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"task": "a5"}, "unknown state-tracking task 'a5'; valid: parity, mod_add, s3, s5"),
        ({"task": "mod_add", "modulus": None}, "mod_add needs an integer modulus >= 2"),
        ({"task": "mod_add", "modulus": 1}, "mod_add needs an integer modulus >= 2"),
        ({"task": "s5", "vocab_size": 64}, "s5 has 120 elements, one token each: vocab_size must be >= 120"),
        ({"task": "parity", "seq_len": 0}, "seq_len must be >= 1"),
    ],
)
def test_impossible_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        build_data("state_tracking", **{"train_size": 4, "test_size": 4, **settings})


def test_data_state_tracking_bundle():
    bundle = build_data(
        "state_tracking", task="mod_add", modulus=7, vocab_size=8, seq_len=12, train_size=30, test_size=5
    )
    assert bundle.metric == "accuracy" and bundle.vocab_size == 8
    x, y = bundle.train
    assert x.shape == (30, 12) and (y == torch.remainder(x.cumsum(1), 7)).all()


class RunningProductLM(torch.nn.Module):
    """Tracks the state exactly for the first `horizon` positions, then repeats the last state it computed."""

    def __init__(self, task: str, vocab_size: int, horizon: int):
        super().__init__()
        self.table, self.vocab_size, self.horizon = torch.from_numpy(group(task).table), vocab_size, horizon
        self.max_positions = None

    def forward(self, input_ids, cache=None, use_cache=False):
        B, T = input_ids.shape
        state, logits = torch.zeros(B, dtype=torch.long), torch.zeros(B, T, self.vocab_size)
        for t in range(T):
            if t < self.horizon:
                state = self.table[state, input_ids[:, t]]
            logits[torch.arange(B), t, state] = 1.0
        return LMOutput(logits=logits, cache=None)


def test_evaluation_past_the_training_length():
    cfg = {"state_tracking": {"task": "s3", "modulus": None, "lengths": [16, 64], "num_examples": 32}}
    cfg["state_tracking"] |= {"batch_size": 16, "seed": 0}
    metrics, rows, _ = run_suite(
        RunningProductLM("s3", 8, horizon=1000), IntTokenizer(8), ["state_tracking"], cfg, "cpu"
    )
    assert metrics == dict.fromkeys(
        [f"state_tracking/{m}@{n}" for n in (16, 64) for m in ("accuracy", "last_accuracy")], 1.0
    )
    metrics, _, _ = run_suite(RunningProductLM("s3", 8, horizon=16), IntTokenizer(8), ["state_tracking"], cfg, "cpu")
    assert metrics["state_tracking/accuracy@16"] == 1.0
    assert metrics["state_tracking/accuracy@64"] < 0.5 and metrics["state_tracking/last_accuracy@64"] < 0.5
    assert [r["task"] for r in rows] == ["state_tracking:s3"] * 2


def test_evaluation_without_a_task_is_skipped_with_the_setting_to_set():
    cfg = {"state_tracking": {"task": None, "modulus": None, "lengths": [16], "num_examples": 4}}
    cfg["state_tracking"] |= {"batch_size": 4, "seed": 0}
    metrics, _, notes = run_suite(RunningProductLM("s3", 8, 99), IntTokenizer(8), ["state_tracking"], cfg, "cpu")
    assert metrics == {} and "set eval.recall.state_tracking.task" in notes[0]


def test_zoo_eval_reads_the_task_from_the_run_folder(tmp_path):
    import zoo
    from zoo.config import compose
    from zoo.evals.cli import evaluate_folder

    overrides = ["data=state_tracking", "data.task=s3", "data.vocab_size=8", "model=gla", "model.d_model=32"]
    cfg = compose([*overrides, "model.n_layers=1", "model.head_dim=16"])
    run = tmp_path / "run"
    model = zoo.build_model(cfg.model)
    model.tokenizer = IntTokenizer(8)  # as zoo-train saves it
    model.save_pretrained(run / "checkpoint")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    settings = {"state_tracking": {"lengths": [8, 16], "num_examples": 4, "batch_size": 4}}
    metrics, _, notes = evaluate_folder(run, ["state_tracking"], settings)
    assert set(metrics) == {f"state_tracking/{m}@{n}" for m in ("accuracy", "last_accuracy") for n in (8, 16)}
    assert notes == []
    (run / ".hydra" / "config.yaml").unlink()  # a folder that does not say its task: skipped, with the fix
    _, _, notes = evaluate_folder(run, ["state_tracking"], settings)
    assert "set eval.recall.state_tracking.task" in notes[0]
