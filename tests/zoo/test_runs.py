"""The run folder (zoo.io.runs): every command finds a run's checkpoint the same way, the `.old` twin of an
interrupted checkpoint swap included, and writes files atomically."""

from __future__ import annotations

import pytest

import zoo
from zoo.config import compose, conf_dir
from zoo.data.tokenizer import IntTokenizer
from zoo.errors import CheckpointError
from zoo.evals.cli import evaluate_folder
from zoo.io.runs import locate, readable_dir, write_dir_atomically, write_text_atomically


def tiny_model():
    overrides = ["model=gla", "model.d_model=32", "model.head_dim=8", "model.n_layers=1", "data.vocab_size=64"]
    model = zoo.build_model(compose(overrides).model)
    model.tokenizer = IntTokenizer(64)  # MQAR's integer tokens
    return model


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    tiny_model().save_pretrained(run / "checkpoint")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("data:\n  seq_len: 16\n")
    return run


def test_locate_a_run_folder_and_its_checkpoint(run_dir, tmp_path):
    assert locate(run_dir) == (run_dir / "checkpoint", run_dir)
    assert locate(run_dir / "checkpoint") == (run_dir / "checkpoint", run_dir)  # described by its run
    alone = tmp_path / "alone"
    tiny_model().save_pretrained(alone)
    assert locate(alone) == (alone, alone)
    with pytest.raises(CheckpointError, match="neither a run folder"):
        locate(tmp_path / "nothing")


def test_the_old_twin_of_an_interrupted_swap_is_found_by_every_reader(run_dir):
    (run_dir / "checkpoint").rename(run_dir / "checkpoint.old")  # the crash hit between the two renames
    assert locate(run_dir) == (run_dir / "checkpoint.old", run_dir)
    assert readable_dir(run_dir / "checkpoint") == run_dir / "checkpoint.old"
    recall = compose([]).eval.recall
    mqar = {**recall.mqar, "seq_lens": [16], "num_kv_pairs": [2], "num_examples": 8}
    metrics, _, _ = evaluate_folder(run_dir, ["mqar"], {**recall, "mqar": mqar})
    assert "mqar/accuracy@16x2" in metrics  # zoo-eval evaluates it and records into the run's results.json
    assert (run_dir / "results.json").exists() and not (run_dir / "checkpoint.old" / "results.json").exists()
    assert zoo.from_pretrained(run_dir / "checkpoint").config.d_model == 32


def test_atomic_writes_leave_the_old_version_or_the_new_one(tmp_path):
    path = write_text_atomically(tmp_path / "a" / "f.json", "1\n")
    write_text_atomically(path, "2\n")
    assert path.read_text() == "2\n" and sorted(p.name for p in path.parent.iterdir()) == ["f.json"]

    def half_written(tmp):
        (tmp / "part").write_text("x")
        raise OSError("disk full")

    folder = write_dir_atomically(tmp_path / "ckpt", lambda tmp: (tmp / "w").write_text("old"))
    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(folder, half_written)
    assert (folder / "w").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "ckpt"]
    assert conf_dir().is_dir()
