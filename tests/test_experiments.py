"""Every `conf/experiment/*.yaml` composes, sweeps every architecture it does not exclude, and (slow) runs.

The experiments are found on disk, so a new one is checked without editing this file. The slow smoke run
trains each experiment for 2 steps in a subprocess, as `zoo-train` would, with its data and its final
evaluation shrunk but not switched off: a renamed key, a broken sweep subdir or a final evaluation that
no longer runs fails here instead of hours into a grid."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from omegaconf import DictConfig, OmegaConf

from tests.helpers import experiment_overrides
from zoo.config import compose, conf_dir

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def experiment_config(name: str) -> DictConfig:
    """`+experiment=NAME` with its `hydra` node (the sweeper's params live there)."""
    compose()  # see sweep()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return hydra_compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)


def sweep(name: str) -> dict[str, list[str]]:
    """The values of every key the experiment's sweeper sweeps, in order, expanded as Hydra's basic sweeper
    expands them (a `glob(...)` over a config group needs Hydra's config loader: it lists the group)."""
    # zoo.config.compose first, as zoo-train does: it readies what composing needs (the typed schemas in
    # Hydra's ConfigStore), which Hydra's own compose below, the one that returns the hydra node, does not.
    compose()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params or {}
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        overrides = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
        return {
            o.get_key_element(): list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]
            for o in overrides
        }


def model_glob(name: str) -> Glob | None:
    """The experiment's `model` sweep as the Glob Hydra parses it, None when it sweeps no model."""
    params = experiment_config(name).hydra.sweeper.params or {}
    if "model" not in params:
        return None
    return OverridesParser.create().parse_override(f"model={params['model']}").value()


def swept_keys(name: str) -> set[str]:
    """The keys the yaml file itself sweeps (read from the file: collecting the tests composes nothing)."""
    params = OmegaConf.select(OmegaConf.load(conf_dir() / "experiment" / f"{name}.yaml"), "hydra.sweeper.params")
    return set(params or {})


MODEL_SWEEPS = [name for name in EXPERIMENTS if "model" in swept_keys(name)]


def test_experiments_and_architectures_are_found():
    assert {"quickstart", "hybrid_ratio", "tradeoff", "zoology_mqar"} <= set(EXPERIMENTS)
    assert {"transformer", "gla", "hybrid_gla"} <= set(MODELS)
    assert {"tradeoff", "zoology_mqar"} <= set(MODEL_SWEEPS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_sweeps_only_keys_it_has(name, token_corpus):
    cfg = compose(experiment_overrides(name, token_corpus))
    assert cfg.model.vocab_size >= cfg.data.vocab_size
    for key, values in sweep(name).items():
        assert values, f"{name}: the sweep over {key} is empty"
        if key != "model":  # a config group; every other swept key must exist, or the sweep adds a stray one
            assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{name} sweeps {key}"


@pytest.mark.parametrize("name", MODEL_SWEEPS)
def test_a_model_sweep_covers_every_architecture_it_does_not_exclude(name):
    """A hand-kept list silently misses a new conf/model/ file; `glob(*, exclude=[...])` names what it leaves
    out. An excluded name must still be a file (a renamed architecture would be a silent no-op), and a pattern
    must match no file."""
    pattern = model_glob(name)
    assert isinstance(pattern, Glob), f"{name}: sweep model with glob(*, exclude=[...]), not a hand-kept list"
    assert pattern.include == ["*"], pattern
    for excluded in pattern.exclude:
        if any(c in excluded for c in "*?["):
            assert not fnmatch.filter(MODELS, excluded), f"{name}: {excluded!r} drops architectures unnamed"
        else:
            assert excluded in MODELS, f"{name} excludes {excluded!r}, which is not in conf/model/"
    kept = [m for m in MODELS if not any(fnmatch.fnmatch(m, p) for p in pattern.exclude)]
    assert sweep(name)["model"] == kept  # and nothing else: no ConfigStore entry becomes a job


# -- slow: every experiment trains 2 steps ---------------------------------------------------------------------

SHRINK = [
    "train.max_steps=2",
    "train.eval_every=2",
    "train.save_every=2",
    "train.log_every=1",
    "train.batch_size=4",
    "train.warmup_steps=1",
    "eval.batch_size=16",
    "eval.max_examples=8",
    # the final evaluation's tasks stay as each experiment sets them; only their sizes shrink
    "eval.recall.mqar.seq_lens=[64]",
    "eval.recall.mqar.num_kv_pairs=[4]",
    "eval.recall.mqar.num_examples=8",
    "eval.recall.passkey.lengths=[128]",
    "eval.recall.passkey.depths=[0.5]",
    "eval.recall.passkey.trials=1",
    "eval.recall.passkey.batch_size=1",
    "eval.lm_eval.limit=4",
    "eval.final.bench.gen_len=2",
]
SHRINK_DATA = {
    "mqar": ["data.train_size=64", "data.test_size=16"],
    # the split is by document: 0.3 of the first ~13 stdlib files, so validation holds blocks of 256 bytes
    "text": ["data.max_bytes=100000", "data.val_fraction=0.3"],
    "tokens": ["data.seq_len=64", "data.val_blocks=4"],
}
# An experiment made for hardware CI lacks: the GPU recipe in one process (FSDP2 needs several), a small width.
SHRINK_EXPERIMENT = {"gpu_340m": ["train.fsdp=false", "model.d_model=64"]}


@pytest.fixture(scope="module")
def lm_eval_data(tmp_path_factory) -> Path:
    """The offline lm-eval tasks' files, written here instead of into ~/.cache."""
    return tmp_path_factory.mktemp("lm_eval_data")


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_a_few_steps(name, tmp_path, lm_eval_data, token_corpus):
    """A sweep experiment runs as a multirun of one job: every swept key pinned to its first value, so the
    sweeper still parses the experiment's sweep and its run folder name (hydra.sweep.subdir) is made."""
    cfg = compose(experiment_overrides(name, token_corpus))
    assert cfg.data.name in SHRINK_DATA, f"add the overrides that shrink data={cfg.data.name} to SHRINK_DATA"
    overrides = [*experiment_overrides(name, token_corpus), *SHRINK, *SHRINK_DATA[cfg.data.name]]
    overrides += SHRINK_EXPERIMENT.get(name, [])
    if cfg.eval.final.bench.lengths:
        overrides.append("eval.final.bench.lengths=[32]")
    swept = sweep(name)
    if swept:  # -m goes first: Hydra's argument parser takes no flag after the overrides
        overrides = ["-m", *overrides, f"hydra.sweep.dir={tmp_path}", *(f"{k}={v[0]}" for k, v in swept.items())]
    else:
        overrides.append(f"hydra.run.dir={tmp_path}")
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "ZOO_LM_EVAL_DATA": str(lm_eval_data)}
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.train", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    log = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, log

    # a sweep keeps going past a failed job (and exits 0), so the job's own status is what tells
    (results_path,) = tmp_path.rglob("results.json")
    results = json.loads(results_path.read_text())
    assert results["status"] == "completed", (results.get("error"), log)
    metrics = results["metrics"]
    assert metrics["train/steps"] == 2
    final = cfg.eval.final
    wanted = [f"{task}/" for task in final.recall] + [f"lm_eval/{task}/" for task in final.lm_eval]
    wanted += ["bench/"] if final.bench.lengths else []
    for prefix in wanted:
        assert any(key.startswith(prefix) for key in metrics), (prefix, sorted(metrics))
