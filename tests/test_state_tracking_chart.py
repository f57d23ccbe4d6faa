"""scripts/state_tracking_chart.py: points named by architecture and variant, the best lr per point, the table and
the plot from run folders (results.json + .hydra/config.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from tests.helpers import load_script

script = load_script("state_tracking_chart")


def write_run(root: Path, name: str, arch: str, mixer: dict, lr: float, held_out: float, curve: dict, steps=None, **kw):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    cfg = {
        "model": {"name": arch, "mixer": arch, "mixers": {arch: mixer}, "n_layers": kw.get("layers", 2)},
        "data": {"name": "state_tracking", "task": kw.get("task", "parity"), "modulus": None, "seq_len": 64},
        "train": {"lr": lr},
    }
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    metrics = {"state_tracking/accuracy": held_out, "train/steps_to_target": steps, "train/steps": 3000}
    metrics |= {"train/time_s": 60.0}
    for n, acc in curve.items():
        metrics[f"state_tracking/accuracy@{n}"] = acc
        metrics[f"state_tracking/last_accuracy@{n}"] = acc - 0.01
    (run / "results.json").write_text(json.dumps({"status": "completed", "metrics": metrics}))


def test_table_keeps_the_best_lr_per_variant_and_draws_the_chart(tmp_path):
    runs = tmp_path / "runs"
    curve_bad, curve_good = {64: 0.97, 512: 0.55}, {64: 0.999, 512: 0.8}
    write_run(runs, "a", "deltanet", {"allow_neg_eigval": False}, 1e-3, 0.97, curve_bad)
    write_run(runs, "b", "deltanet", {"allow_neg_eigval": True}, 1e-3, 0.999, curve_good, steps=300)
    write_run(runs, "c", "deltanet", {"allow_neg_eigval": True}, 3e-3, 0.90, {64: 0.9, 512: 0.5})
    write_run(runs, "d", "gated_deltaproduct", {"num_householder": 2, "allow_neg_eigval": True}, 1e-3, 0.99, curve_good)
    assert script.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "state_tracking.md").read_text()
    assert "| deltanet | 0.970 | 0.550 | 0.540 | not reached (3000) | 0.001 |" in table
    assert "| deltanet (neg. eig.) | 0.999 | 0.800 | 0.790 | 300 | 0.001 |" in table  # lr 1e-3 beat 3e-3
    assert "| gated_deltaproduct (n_h=2, neg. eig.) |" in table
    assert "4 runs, 4.0 min of training" in table
    assert (tmp_path / "out" / "state_tracking.png").stat().st_size > 0
    assert len((tmp_path / "out" / "state_tracking.csv").read_text().splitlines()) == 1 + 4 * 2


def test_points_name_their_depth_where_runs_differ_in_depth(tmp_path):
    runs = tmp_path / "runs"
    curve = {64: 0.99, 512: 0.9}
    gdp = "gated_deltaproduct"
    write_run(runs, "a", gdp, {"num_householder": 1, "allow_neg_eigval": True}, 3e-3, 0.9, curve, task="s3")
    write_run(runs, "b", gdp, {"num_householder": 1, "allow_neg_eigval": True}, 3e-3, 0.5, curve, task="s3", layers=1)
    write_run(runs, "c", "mamba2", {}, 3e-3, 0.5, curve, task="s3", layers=1)
    write_run(runs, "d", "mamba2", {}, 3e-3, 0.5, curve)  # parity
    assert script.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "state_tracking.md").read_text()
    for point in (
        "gated_deltaproduct (n_h=1, neg. eig., 2 layers)",
        "gated_deltaproduct (n_h=1, neg. eig., 1 layer)",
        "mamba2 (1 layer)",
        "mamba2 (2 layers)",
    ):
        assert f"| {point} |" in table


def test_points_keep_their_names_when_every_run_has_one_depth(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "a", "mamba2", {}, 3e-3, 0.5, {64: 0.6}, layers=1)
    write_run(runs, "b", "mamba2", {}, 3e-3, 0.5, {64: 0.6}, task="s3", layers=1)
    assert script.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "state_tracking.md").read_text().count("| mamba2 |") == 2
