"""Scale-out: `torchrun` data parallel (DDP and FSDP2 on CPU/gloo) trains exactly like one process at the same
global batch and writes one complete run folder; the SLURM launcher config composes without submitting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import TINY_HYBRID_MQAR, interrupted_run
from zoo.config import compose
from zoo.errors import ConfigError
from zoo.io.results import read_metrics, read_results
from zoo.train.distributed import Dist, check_batch
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
    "train.num_threads=1",
    "train.max_steps=6",
    "train.save_every=3",
    "train.eval_every=3",
]
CHECKPOINT_FILES = {
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "trainer_state.safetensors",
    "trainer_state.json",
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process at the global batch: a full 6-step run, and a run killed at step 4 (checkpoint at step 3)."""
    root = tmp_path_factory.mktemp("reference")
    run_training(compose(TINY), root / "full")
    interrupted_run(compose(TINY), root / "partial", 4)
    return root


def losses(run_dir, key: str = "train/loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}


def torchrun(cwd, *overrides, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node N -m zoo.train OVERRIDES` in `cwd` (torchrun is torch.distributed.run)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "zoo.train",
        *TINY,
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_same_training(run_dir, ref_dir, steps) -> None:
    """Equal losses and gradient norms, up to float reduction order. The norm catches a wrongly scaled
    gradient, which the losses would not: clipping and Adam make the steps nearly scale-free."""
    for key in ("train/loss", "grad_norm"):
        got, want = losses(run_dir, key), losses(ref_dir, key)
        for step in steps:
            assert got[step] == pytest.approx(want[step], rel=1e-5), (key, step, got[step], want[step])


def assert_same_weights(run_dir, ref_dir) -> None:
    got = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    want = load_file(str(ref_dir / "checkpoint" / "model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def assert_complete(run_dir) -> None:
    """Exactly one record per step (rank 0 alone logged), a completed results.json, a full checkpoint."""
    steps = [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert results["metrics"]["train/steps"] == 6 and "mqar/accuracy" in results["metrics"]
    assert {p.name for p in (run_dir / "checkpoint").iterdir()} == CHECKPOINT_FILES


def test_torchrun_ddp_matches_one_process_and_writes_one_run_folder(reference, tmp_path):
    """The ranks' ${now:...} run folders may differ (here always: microseconds); all must use rank 0's."""
    torchrun(tmp_path, "hydra.run.dir=runs/day/${now:%H-%M-%S-%f}")
    leaves = [p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()]
    assert len(leaves) == 1, leaves
    (run_dir,) = leaves
    assert_complete(run_dir)
    assert_same_training(run_dir, reference / "full", range(1, 7))
    assert_same_weights(run_dir, reference / "full")
    assert (run_dir / ".hydra" / "config.yaml").exists()
    ref_metrics = read_results(reference / "full")["metrics"]
    assert read_results(run_dir)["metrics"]["mqar/loss"] == pytest.approx(ref_metrics["mqar/loss"], rel=1e-5)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_resumes_a_single_process_checkpoint(reference, tmp_path, mode):
    """Checkpoints do not depend on the world size: 2 ranks (DDP, or FSDP2 which shards and gathers the
    weights and the optimizer state) continue the 1-process run killed at step 4 exactly."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "partial", run_dir)
    torchrun(tmp_path, f"hydra.run.dir={run_dir}", "train.resume=true", f"train.fsdp={mode == 'fsdp'}")
    assert_complete(run_dir)
    assert_same_training(run_dir, reference / "full", range(4, 7))
    assert_same_weights(run_dir, reference / "full")
    got = load_file(str(run_dir / "checkpoint" / "trainer_state.safetensors"))
    want = load_file(str(reference / "full" / "checkpoint" / "trainer_state.safetensors"))
    assert got.keys() == want.keys()  # the same parameter indices: the optimizer state is world-size free
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)


def test_each_rank_takes_its_own_slice_of_the_global_batch():
    x, y = torch.arange(16).view(8, 2), torch.arange(16, 32).view(8, 2)
    parts = [Dist(rank=r, world=4).local_slice(x, y) for r in range(4)]
    assert all(len(px) == 2 for px, _ in parts)
    torch.testing.assert_close(torch.cat([px for px, _ in parts]), x)
    torch.testing.assert_close(torch.cat([py for _, py in parts]), y)
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        check_batch(16, Dist(rank=0, world=3))


def test_fsdp_without_torchrun_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.fsdp=true needs several processes"):
        run_training(compose([*TINY, "train.fsdp=true"]), tmp_path)


def test_slurm_launcher_composes_on_the_plugin_schema_without_a_deprecation_warning(tmp_path):
    """`hydra/launcher=slurm` extends the plugin's `submitit_slurm` schema through its defaults list. A config
    file named like the schema would be matched against it implicitly, which Hydra 1.1+ warns is deprecated."""
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="hydra-submitit-launcher is not installed (pip install 'hybrid-zoo[slurm]')",
    )
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from zoo.config import conf_dir

    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.tasks_per_node=4"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a warning already shown once in this process would be hidden
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    hydra_warnings = [str(w.message) for w in caught if "deprecated" in str(w.message) or "schema" in str(w.message)]
    assert not hydra_warnings, hydra_warnings
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4
    assert launcher.timeout_min == 1440 and launcher.nodes == 1 and launcher.cpus_per_task == 8
    assert launcher.mem_gb is None
    assert "qos" in launcher and "account" in launcher  # the plugin's own fields are still there

    # The real command line composes it too (as `zoo-train -m ...` would); --cfg prints it and submits nothing.
    # HYDRA_DEPRECATION_WARNINGS_AS_ERRORS turns any Hydra deprecation warning into a failed command.
    env = {**os.environ, "HYDRA_DEPRECATION_WARNINGS_AS_ERRORS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.train", *overrides, "--cfg", "hydra"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deprecated" not in proc.stderr, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout and "tasks_per_node: 4" in proc.stdout
    assert not (tmp_path / "runs").exists()
