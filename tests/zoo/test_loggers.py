"""Training logs: metrics.jsonl always; TensorBoard and Weights & Biases (offline) when enabled and installed,
and a config error naming the pip package when enabled but not installed."""

from __future__ import annotations

import sys

import pytest

from zoo.config import compose
from zoo.errors import ConfigError
from zoo.io.results import read_metrics
from zoo.train.loggers import RunLogger
from zoo.train.loop import run_training

TINY = [
    "model=gla",
    "model.d_model=32",
    "model.head_dim=8",
    "model.n_layers=1",
    "data.vocab_size=64",
    "data.seq_len=32",
    "data.num_kv_pairs=4",
    "data.train_size=64",
    "data.test_size=16",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.max_steps=3",
    "train.eval_every=3",
    "train.save_every=3",
    "train.num_threads=1",
]


def hide(monkeypatch, package: str) -> None:
    """Make `import package` fail as if it were not installed (None in sys.modules raises ImportError)."""
    for name in list(sys.modules):
        if name == package or name.startswith(package + ".") or name.startswith("torch.utils.tensorboard"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def test_tensorboard_writes_events_of_the_training_run(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'hybrid-zoo[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_training(compose([*TINY, "train.log.tensorboard=true"]), tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == [1, 2, 3]  # still written
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert {"train/loss", "lr", "grad_norm", "mqar/accuracy"} <= set(acc.Tags()["scalars"])
    logged = {e.step: e.value for e in acc.Scalars("train/loss")}
    want = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r}
    assert logged == pytest.approx(want)


def test_wandb_offline_run_is_written_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'hybrid-zoo[wandb]')")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(tmp_path, {"wandb": {"project": "zoo-test", "mode": "offline"}}, {"train": {"lr": 1e-3}})
    logger.log({"step": 1, "train/loss": 4.0, "lr": 1e-3})
    logger.log({"step": 2, "train/loss": 3.5, "lr": 1e-3})
    logger.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb")), sorted(p.name for p in run.iterdir())
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert run.name.endswith(run_id)  # a resumed run reuses this id
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


@pytest.mark.parametrize(
    ("option", "package"), [({"tensorboard": True}, "tensorboard"), ({"wandb": {"mode": "offline"}}, "wandb")]
)
def test_enabled_but_not_installed_names_the_package(tmp_path, monkeypatch, option, package):
    hide(monkeypatch, package)
    with pytest.raises(ConfigError, match=f"needs the `{package}` package.*pip install {package}"):
        RunLogger(tmp_path, option, {})
    with pytest.raises(ConfigError, match=f"pip install {package}"):  # on every rank, not only the writer
        RunLogger(tmp_path, option, {}, enabled=False)


def test_disabled_loggers_write_only_metrics_jsonl(tmp_path):
    logger = RunLogger(tmp_path, {"tensorboard": False, "wandb": None}, {})
    logger.log({"step": 1, "train/loss": 1.0})
    logger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    silent = RunLogger(tmp_path / "other", {"tensorboard": False}, {}, enabled=False)
    silent.log({"step": 1, "train/loss": 1.0})  # ranks other than 0 write nothing
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="unknown config key 'train.log.tensorbord'; valid keys under 'train.log'"):
        RunLogger(tmp_path, {"tensorbord": True}, {})
