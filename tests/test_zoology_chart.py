"""scripts/zoology_chart.py on hand-made run folders: best lr per point, the threshold column, failed runs
listed, a PNG drawn; and conf/experiment/zoology_mqar.yaml composes into the grid it documents."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.helpers import load_script
from zoo.config import compose


def fake_run(root: Path, name: str, overrides: list[str], accuracy: float | None, status="completed", steps=None):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose(["+experiment=zoology_mqar", *overrides]), run / ".hydra" / "config.yaml")
    metrics = {} if accuracy is None else {"mqar/accuracy": accuracy, "train/steps_to_target": steps}
    metrics["train/time_s"] = 30.0
    (run / "results.json").write_text(json.dumps({"metrics": metrics, "status": status}))


def test_chart_keeps_the_best_lr_and_reports_the_threshold(tmp_path):
    for d, lr, acc in [(64, 1e-3, 0.2), (64, 3e-3, 0.5), (128, 1e-3, 0.95), (128, 3e-3, 0.4)]:
        fake_run(tmp_path, f"gla-{d}-{lr}", ["model=gla", f"model.d_model={d}", f"train.lr={lr}"], acc)
    fake_run(tmp_path, "gla-hyb", ["model=gla", "model.attn.layers=[1]", "model.d_model=64"], 0.99)
    fake_run(tmp_path, "attn", ["model=transformer", "model.d_model=64"], 1.0, steps=500)
    fake_run(tmp_path, "broken", ["model=retnet", "model.d_model=64"], None, status="failed")
    # a second setting; at equal accuracy the lr that reached the target in fewer steps is the point's best
    longer = ["data.seq_len=128", "data.num_kv_pairs=8", "model=transformer", "model.d_model=64"]
    fake_run(tmp_path, "attn-128-slow", [*longer, "train.lr=1e-3"], 0.995, steps=900)
    fake_run(tmp_path, "attn-128-fast", [*longer, "train.lr=3e-3"], 0.995, steps=300)
    chart = load_script("zoology_chart")
    chart.main([str(tmp_path), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "zoology_mqar.md").read_text()
    short, long = table.split("### seq_len 128, 8 kv pairs")
    gla = "| gla | 0.500 (not reached, lr 0.003) | 0.950 (not reached, lr 0.001) |"
    assert gla in short and short.split("| gla |")[1].split("\n")[0].endswith("| 128 |")
    assert "| gla + attn | 0.990 (not reached, lr 0.001) | - |" in short and "| transformer | 1.000 (" in short
    assert "| transformer | 0.995 (300 steps, lr 0.003) |" in long
    # width 64 ran at both settings: its accuracy per setting, in a table and a chart
    by_setting = table.split("### d_model 64: accuracy per setting")[1]
    assert "| architecture | (64, 4) | (128, 8) |" in by_setting and "| transformer | 1.000 | 0.995 |" in by_setting
    assert "| gla | 0.500 | - |" in by_setting and "### d_model 128" not in table
    assert (tmp_path / "out" / "zoology_mqar_settings.png").stat().st_size > 10_000
    assert "- not completed:" in table and "broken (status: failed)" in table
    # the grid's state, counted: points at the target per setting and width, the lrs run at each point short of
    # it (gla + attn's 0.99 has no steps_to_target: not reached), the architectures not run there
    coverage = table.split("### Points at the early-stop target, per setting and width")[1]
    assert "| (64, 4) | 64 | 1 of 2 | 0 of 1 | gla 0.5 (2), gla + attn 0.99 (1) | - |" in coverage
    assert "| (64, 4) | 128 | 0 of 1 | 0 of 0 | gla 0.95 (2) | gla + attn, transformer |" in coverage
    assert "| (128, 8) | 64 | 1 of 1 | 0 of 0 | - | gla, gla + attn |" in coverage
    assert "2 of 5 points at the early-stop target." in coverage
    assert "9 runs, 4.5 min of training in all" in table
    assert (tmp_path / "out" / "zoology_mqar.png").stat().st_size > 10_000
    assert len((tmp_path / "out" / "zoology_mqar.csv").read_text().splitlines()) == 10  # header + 9 runs


def test_experiment_composes_into_the_documented_grid():
    cfg = compose(["+experiment=zoology_mqar", "model=based", "model.attn.layers=[1]"])
    assert (cfg.model.n_layers, cfg.data.seq_len, cfg.data.num_kv_pairs) == (2, 64, 4)
    conf = Path(__file__).resolve().parent.parent / "conf"
    params = OmegaConf.load(conf / "experiment/zoology_mqar.yaml")
    archs = OverridesParser.create().parse_override(f"model={params.hydra.sweeper.params.model}").value()
    models = sorted(p.stem for p in (conf / "model").glob("*.yaml"))
    # every architecture but the two the experiment excludes (and says why): hybrid_gla, swa
    assert archs.filter(models) == [m for m in models if m not in ("hybrid_gla", "swa")]
