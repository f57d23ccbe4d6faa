"""zoo-publish: exact round trip (single file and sharded), the model card, pushing without network, and
loading a published folder by hub id."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import zoo
from zoo.config import compose
from zoo.data.tokenizer import IntTokenizer
from zoo.errors import CheckpointError
from zoo.io.publish import main, parse_size, publish
from zoo.io.results import update_results

OVERRIDES = [
    "model=hybrid_gla",
    "model.d_model=32",
    "model.head_dim=8",
    "model.n_layers=2",
    "model.attn.layers=[1]",
    "data.vocab_size=50",
    "train.max_steps=7",
    "train.batch_size=4",
]
METRICS = {
    "params": 0,
    "mqar/accuracy": 0.875,
    "mqar/loss": 0.5,
    "train/steps": 7,
    "state/bytes@1024": 1,
    "passkey/accuracy@1024": 1.0,
    "lm_eval/arc_easy/acc,none": 0.25,
    "bench/decode_tok_s@1024": 1234.5,
}
REPO = Path(__file__).resolve().parents[2]
IDS = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def cfg():
    return compose(OVERRIDES)


def make_run(path: Path, cfg, results: bool = True, hydra: bool = True):
    """A run folder as `zoo-train` leaves it (checkpoint/, results.json, .hydra/), for a tiny trained-looking model."""
    torch.manual_seed(0)
    model = zoo.build_model(cfg.model).eval()
    model.tokenizer = IntTokenizer(vocab_size=50)
    model.save_pretrained(path / "checkpoint")
    if results:
        update_results(path, {**METRICS, "params": model.num_params()}, status="completed", device="cpu")
    if hydra:
        (path / ".hydra").mkdir()
        OmegaConf.save(cfg, path / ".hydra" / "config.yaml")  # unresolved, as Hydra writes it
        (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(OVERRIDES))
    return model


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    with torch.no_grad():
        assert torch.equal(a(IDS).logits, b(IDS).logits)


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_publish_round_trip_is_exact(tmp_path, cfg):
    model = make_run(tmp_path / "run", cfg)
    out = publish(tmp_path / "run", tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", "results.json", "tokenizer.json"]
    loaded = zoo.from_pretrained(out)
    assert_same_model(model, loaded)
    assert loaded.tokenizer == IntTokenizer(vocab_size=50)
    assert json.loads((out / "results.json").read_text())["metrics"]["mqar/accuracy"] == 0.875


def test_sharded_publish_round_trip_is_exact(tmp_path, cfg, capsys):
    model = make_run(tmp_path / "run", cfg)
    limit = 4000  # bytes: the tiny model (about 50 KB of tensors) spreads over many shards
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--max-shard-size", "4KB"]) == 0
    assert "published" in capsys.readouterr().out
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(set(index["weight_map"].values())) == shards
    tensors = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied head stored once
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    for shard in shards:  # each shard under the limit unless it holds one tensor that alone exceeds it
        held = [tensors[n] for n, f in index["weight_map"].items() if f == shard]
        assert len(held) == 1 or sum(t.numel() * t.element_size() for t in held) <= limit
    assert_same_model(model, zoo.from_pretrained(out))


def test_card_front_matter_and_prose(tmp_path, cfg):
    model = make_run(tmp_path / "run", cfg)
    out = publish(tmp_path / "run", tmp_path / "tiny-hybrid")
    meta, body = split_card((out / "README.md").read_text())
    assert meta["library_name"] == "hybrid-zoo"
    assert {"hybrid-zoo", "gla", "attn", "linear-attention", "hybrid"} <= set(meta["tags"])
    [entry] = meta["model-index"]
    assert entry["name"] == "tiny-hybrid"
    metrics = {m["name"]: m for r in entry["results"] for m in r["metrics"]}
    assert metrics["mqar/accuracy"] == {"type": "accuracy", "value": 0.875, "name": "mqar/accuracy"}
    assert not any(k.startswith(("train/", "state/", "bench/")) or k == "params" for k in metrics)  # cost: no eval
    datasets = {r["dataset"]["type"]: [m["type"] for m in r["metrics"]] for r in entry["results"]}
    assert datasets == {"mqar": ["accuracy", "loss"], "passkey": ["accuracy"], "arc_easy": ["acc"]}
    # prose: which layers are attention, size, state, training, results, and the reproduce command
    assert "Attention layers: 1 (1 of 2); the other layers use gla." in body
    assert "| 0 | gla | linear / recurrent (fixed-size state) |" in body
    assert "| 1 | attn | attention (full) |" in body
    assert f"Parameters: {model.num_params():,}" in body
    assert f"at 65,536 tokens (batch 1): {model.state_bytes(65536):,} bytes" in body
    assert f"at 1,024 tokens (batch 1): {model.state_bytes(1024):,} bytes" in body
    assert "Data: `mqar` (vocab_size=50, seq_len=64" in body
    assert "7 steps trained (train.max_steps=7)" in body
    assert "| mqar/accuracy | 0.8750 |" in body and "| bench/decode_tok_s@1024 | 1,234.5 |" in body
    assert "completed by `zoo-eval path=RUN_DIR` (recall suite and lm-eval metrics) and `zoo-bench`" in body
    assert "zoo-train model=hybrid_gla model.d_model=32 model.head_dim=8 model.n_layers=2 " in body
    assert "'model.attn.layers=[1]' data.vocab_size=50 train.max_steps=7 train.batch_size=4\n" in body


def test_card_says_what_the_run_does_not_record(tmp_path, cfg):
    make_run(tmp_path / "run", cfg, results=False, hydra=False)
    out = publish(tmp_path / "run" / "checkpoint", tmp_path / "out")  # a bare checkpoint folder is accepted too
    meta, body = split_card((out / "README.md").read_text())
    assert "model-index" not in meta and "datasets" not in meta
    assert "No results.json in the run folder" in body
    assert "no `.hydra/config.yaml`, so the training data and settings are not recorded" in body
    assert "no `.hydra/`, so the command that trained it is not recorded" in body
    assert not (out / "results.json").exists()


def test_out_dir_that_would_destroy_data_is_refused(tmp_path, cfg, capsys):
    make_run(tmp_path / "run", cfg)
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "run")]) == 2
    assert "would replace the run folder" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "notes")]) == 2
    assert "is not a published model folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert zoo.from_pretrained(tmp_path / "run" / "checkpoint").layer_mixers == ["gla", "attn"]


def test_push_offline_fails_clearly_and_leaves_the_folder(tmp_path, cfg):
    """The real entry point, offline: one clear line, non-zero exit, and the local folder complete."""
    model = make_run(tmp_path / "run", cfg)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "zoo.io.publish",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--push",
        "someone/tiny",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("zoo-publish: error: ") and "HF_HUB_OFFLINE" in line and str(out) in line
    assert (out / "README.md").exists()
    assert_same_model(model, zoo.from_pretrained(out))


def test_push_connection_error_is_one_line(tmp_path, cfg, monkeypatch, capsys):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'\n(more detail on a second line)")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "create_repo", no_network)
    monkeypatch.setattr(huggingface_hub, "upload_folder", no_network)
    make_run(tmp_path / "run", cfg)
    out = tmp_path / "out"
    assert main([str(tmp_path / "run"), "--out", str(out), "--push", "someone/tiny"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "could not push to someone/tiny: ConnectionError: Failed to resolve 'huggingface.co'" in line
    assert str(out) in line and "second line" not in line
    assert (out / "config.json").exists() and (out / "README.md").exists()


def test_push_uploads_the_complete_folder(tmp_path, cfg, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(repo_id, folder_path, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    make_run(tmp_path / "run", cfg)
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--push", "me/tiny", "--private"]) == 0
    assert calls[0] == ("create", "me/tiny", {"private": True, "exist_ok": True})
    assert calls[1][:2] == ("upload", "me/tiny") and {"README.md", "config.json", "model.safetensors"} <= set(
        calls[1][2]
    )
    assert "pushed to https://huggingface.co/me/tiny" in capsys.readouterr().out
    meta, body = split_card((tmp_path / "out" / "README.md").read_text())
    assert meta["model-index"][0]["name"] == "tiny" and 'zoo.from_pretrained("me/tiny")' in body


def test_push_without_huggingface_hub_says_how_to_install(tmp_path, cfg, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    make_run(tmp_path / "run", cfg)
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--push", "me/tiny"]) == 1
    assert "pip install huggingface_hub" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_from_pretrained_hub_id_downloads_index_and_shards(tmp_path, cfg, monkeypatch):
    import huggingface_hub

    model = make_run(tmp_path / "run", cfg)
    out = publish(tmp_path / "run", tmp_path / "out", max_shard_bytes=4000)
    requested = []

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        requested.append(repo_id)
        # what the Hub would send: only the published files these patterns select
        for file in out.iterdir():
            assert any(fnmatch.fnmatch(file.name, p) for p in allow_patterns), f"{file.name} would not be downloaded"
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = zoo.from_pretrained("someone/tiny-hybrid")
    assert requested == ["someone/tiny-hybrid"]
    assert_same_model(model, loaded)


def test_from_pretrained_hub_failure_is_a_checkpoint_error(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="someone/missing: not a local folder, and the Hub download failed"):
        zoo.from_pretrained("someone/missing")


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1.5KiB") == 1536
    assert parse_size("12") == 12
    for bad in ("5 parsecs", "", "0MB", "-1GB"):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)
