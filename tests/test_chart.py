"""zoo-chart on hand-written run folders: the table keeps what the runs recorded and nothing else."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from omegaconf import OmegaConf

from zoo.config import compose
from zoo.report.chart import chart, main, mean_cells, pareto_front


def fake_run(folder, overrides: list[str], results: dict) -> None:
    """A run folder as zoo-train leaves it, without training: the composed config and a results.json."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose(overrides), folder / ".hydra" / "config.yaml")
    (folder / "results.json").write_text(json.dumps(results))


def test_pareto_front_keeps_the_undominated_points():
    points = [(0.9, 20.0), (0.5, 10.0), (0.4, 12.0), (0.9, 25.0), (0.1, 9.0), (0.5, 10.0)]
    # (0.4, 12) is beaten by (0.5, 10); (0.9, 25) by (0.9, 20); the two equal (0.5, 10) both stay
    assert pareto_front(points) == [4, 1, 5, 0]


def test_the_table_has_what_the_runs_recorded_and_blanks_elsewhere(tmp_path):
    fake_run(
        tmp_path / "runs" / "a",
        ["model=gla", "model.n_layers=4", "model.attn.layers=[1,3]"],
        {
            "status": "completed",
            "model": {"layers": ["gla", "attn", "gla", "attn"]},
            "metrics": {
                "params": 1000,
                "val/ppl": 12.5,
                "lm_eval/zoo_mqar/acc": 0.25,
                "passkey/accuracy@1024": 1.0,
                "state/bytes@1024": 4096,
                "state/bytes@65536": 262144,
                "bench/decode_tok_s@4096": 50.0,
                "train/steps": 300,
                "train/time_s": 42.5,
            },
        },
    )
    fake_run(
        tmp_path / "runs" / "b",
        ["model=retnet", "model.n_layers=2"],
        {
            "status": "failed",
            "metrics": {"params": 900, "val/ppl": "nan"},
            "error": {"type": "OutOfMemoryError", "message": "CUDA out of memory.\nTried to allocate", "traceback": []},
        },
    )
    rows, written, notes = chart([tmp_path / "runs"], tmp_path / "out")
    with open(tmp_path / "out" / "tradeoff.csv") as f:
        table = {r["run"]: r for r in csv.DictReader(f)}
    a, b = table["a"], table["b"]
    assert (a["architecture"], a["attn_layers"], a["attn_at"], a["n_layers"]) == ("gla", "2", "1 3", "4")
    assert float(a["mqar_acc"]) == 0.25 and a["mqar_source"] == "lm_eval/zoo_mqar/acc"
    assert float(a["passkey_acc@1024"]) == 1.0 and float(a["decode_tok_s@4096"]) == 50.0
    assert (a["steps"], float(a["train_s"]), float(a["lr"])) == ("300", 42.5, compose(["model=gla"]).train.lr)
    assert a["prefill_tok_s@4096"] == "" and a["error"] == ""  # not measured: blank
    assert b["status"] == "failed" and b["error"] == "OutOfMemoryError: CUDA out of memory."
    assert b["val_ppl"] == "" and b["state_bytes_1k"] == "" and b["attn_layers"] == "0"  # a NaN is not a value
    names = {p.name for p in written}
    assert {"recall_vs_state.png", "throughput.png"} <= names
    # the one completed run has val/ppl and an MQAR accuracy: it is its own Pareto front
    assert "quality_vs_recall.png" in names
    assert notes == [
        "text_recall.png not drawn: no completed run has val/ppl_non_ar with val/ppl_ar or val/ppl_repeat "
        "(text runs' evaluation)",
        "mqar_grid.png not drawn: no completed run has the recall suite's mqar/accuracy@<seq_len>x<pairs>",
        "learning_curves.png not drawn: no completed run logged an evaluation (val/loss, val/ppl_ar, "
        "val/ppl_repeat, mqar/accuracy) in metrics.jsonl",
    ]  # these runs have no metrics.jsonl


def test_plots_without_data_are_reported_not_drawn(tmp_path):
    fake_run(tmp_path / "r", ["model=gla"], {"status": "completed", "metrics": {"params": 10}})
    _, written, notes = chart([tmp_path])
    assert {p.name for p in written} == {"tradeoff.csv", "tradeoff.md"}
    assert len(notes) == 6 and all("not drawn" in n for n in notes)


def test_no_run_folders_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("zoo-chart: error: no run folders")


def test_python_dash_m_zoo_chart(tmp_path):
    fake_run(tmp_path / "r", ["model=gla"], {"status": "completed", "metrics": {"params": 10}})
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| r | gla |" in proc.stdout and (tmp_path / "tradeoff.md").exists()


def test_learning_curves_are_drawn_from_the_evaluations_in_metrics_jsonl(tmp_path):
    from zoo.report.chart import learning_curve

    for name, losses in (("transformer", [3.0, 2.0, 1.5]), ("gla", [3.0, 2.5, 2.2])):
        run = tmp_path / name
        overrides = [f"model={name}", "data=text", "data.seq_len=128", "train.batch_size=8"]
        metrics = {"val/loss": losses[-1], "val/ppl_ar": 3.0, "train/steps_to_target": None}
        fake_run(run, overrides, {"status": "completed", "metrics": metrics})
        records = [{"step": 10 * (i + 1), "train/loss": 9.0} for i in range(3)]  # training records: not a curve
        records += [{"step": 10 * (i + 1), "val/loss": v, "val/ppl_ar": 2 * v} for i, v in enumerate(losses)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = learning_curve(tmp_path / "gla")
    assert curve["val/loss"] == [(10 * 8 * 128, 3.0), (20 * 8 * 128, 2.5), (30 * 8 * 128, 2.2)]
    assert set(curve) == {"val/loss", "val/ppl_ar"}
    rows, written, notes = chart([tmp_path], tmp_path / "out")
    assert "learning_curves.png" in {p.name for p in written}
    assert rows[0]["val_ppl_ar"] == 3.0 and rows[0]["steps_to_target"] is None


def test_runs_that_would_share_a_label_are_named_by_their_folders():
    from zoo.report.chart import labels

    rows = [{"run": f"pos{p}", "architecture": "transformer", "attn_layers": 2, "n_layers": 2} for p in (0, 64)]
    assert labels(rows) == {"pos0": "pos0", "pos64": "pos64"}
    rows[1] |= {"architecture": "gla", "attn_layers": 0}
    assert labels(rows) == {"pos0": "transformer", "pos64": "gla"}


def test_text_runs_chart_quality_against_recall_and_cost(tmp_path):
    for name, attn, ar, repeat in (("transformer", "[]", 2.0, 1.2), ("gla", "[]", 6.0, 9.0), ("gla", "[1]", 3.0, 2.0)):
        metrics = {
            "val/ppl_non_ar": 20.0,
            "val/ppl_ar": ar,
            "val/ppl_repeat": repeat,
            "state/bytes@1024": 4096 if attn == "[]" and name == "gla" else 65536,
            "bench/decode_tok_s@1024": 100.0,
            "bench/decode_tok_s@4096": 80.0,
        }
        run = tmp_path / f"{name}-{attn}"
        fake_run(
            run,
            [f"model={name}", "data=text", f"model.attn.layers={attn}"],
            {"status": "completed", "metrics": metrics},
        )
    rows, written, notes = chart([tmp_path], tmp_path / "out")
    assert "text_recall.png" in {p.name for p in written}, notes
    assert {r["run"]: r["val_ppl_repeat"] for r in rows} == {"gla-[1]": 2.0, "gla-[]": 9.0, "transformer-[]": 1.2}


def test_the_recall_suites_mqar_grid_is_a_column_per_cell_and_a_heatmap(tmp_path):
    for name, attn, accs in (
        ("gla", "[]", (1.0, 0.4, 0.1)),
        ("gla", "[1]", (1.0, 0.9, 0.8)),
        ("transformer", "[]", (1.0,) * 3),
    ):
        cells = {"mqar/accuracy@64x4": accs[0], "mqar/accuracy@128x16": accs[1], "mqar/accuracy@512x64": accs[2]}
        metrics = {**cells, "state/bytes@1024": 4096, "bench/decode_tok_s@1024": 100.0}
        fake_run(
            tmp_path / f"{name}-{attn}",
            [f"model={name}", f"model.attn.layers={attn}"],
            {"status": "completed", "metrics": metrics},
        )
    rows, written, notes = chart([tmp_path], tmp_path / "out")
    assert "mqar_grid.png" in {p.name for p in written}, notes
    header = (tmp_path / "out" / "tradeoff.md").read_text().splitlines()[0]
    assert header.index("mqar_acc@64x4") < header.index("mqar_acc@128x16") < header.index("mqar_acc@512x64")
    assert {r["run"]: r["mqar_acc@128x16"] for r in rows} == {"gla-[1]": 0.9, "gla-[]": 0.4, "transformer-[]": 1.0}


def test_the_grid_mean_is_over_the_fullest_runs_cells_and_leaves_out_runs_with_fewer():
    grid = {"mqar_acc@64x4": 1.0, "mqar_acc@128x16": 0.5}
    rows = [{"run": "pure", **grid}, {"run": "hybrid", **grid}, {"run": "table64", "mqar_acc@64x4": 1.0}]
    common, kept, left_out = mean_cells(rows, list(grid))
    assert common == list(grid)
    assert [r["run"] for r in kept] == ["pure", "hybrid"] and [r["run"] for r in left_out] == ["table64"]
