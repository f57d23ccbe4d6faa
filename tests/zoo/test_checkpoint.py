"""Checkpoints: bit-exact round trip, clear errors for mismatched or corrupt files, no code from files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.config import compose
from zoo.errors import CheckpointError
from zoo.io.checkpoint import readable_dir, save_pretrained


def tiny(arch="hybrid_gla", *overrides):
    cfg = compose(
        [
            f"model={arch}",
            "model.d_model=32",
            "model.head_dim=8",
            "model.n_layers=2",
            "model.attn.layers=[]" if arch != "hybrid_gla" else "model.attn.layers=[1]",
            "data.vocab_size=50",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    return zoo.build_model(cfg.model).eval()


def test_round_trip_is_bit_exact(tmp_path):
    model = tiny()
    ids = torch.randint(0, 50, (2, 9))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = zoo.from_pretrained(tmp_path / "ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight is loaded.embed.weight  # tying survives the round trip
    assert loaded.layer_mixers == ["gla", "attn"]


def test_config_is_plain_data_with_resolved_mixers(tmp_path):
    tiny().save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert "_target_" not in text
    cfg = json.loads(text)["model"]
    assert cfg["mixers"]["gla"]["expand_k"] == 0.5 and cfg["mixers"]["attn"]["rope_theta"] == 10000.0


def test_a_parallel_layer_rebuilds_from_its_config_alone(tmp_path):
    """The parallel mixer keeps its branches' names; their options are resolved into config.json beside it."""
    model = tiny("parallel", "model.mixers.mamba2.d_state=8")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())["model"]
    assert cfg["mixers"]["parallel"] == {"branches": ["swa", "mamba2"]}
    assert cfg["mixers"]["mamba2"]["d_state"] == 8 and cfg["mixers"]["swa"]["window_size"] == 64
    loaded = zoo.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_shared_blocks_are_stored_once_and_round_trip(tmp_path):
    """A shared block read by three layers: its weights are one set of tensors in the file, each use's adapters and
    projection its own, and the loaded model gives the same logits."""
    model = tiny("mamba2", "model.n_layers=3", "model.shared.layers=[0,1,2]", "model.shared.num_heads=4")
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert sorted(k for k in stored if ".q_proj." in k) == ["shared_blocks.0.q_proj.weight"]
    assert sorted(k for k in stored if k.endswith(".proj.weight")) == [
        f"blocks.{i}.shared_use.proj.weight" for i in range(3)
    ]
    assert sum(p.numel() for p in stored.values()) == model.num_params()  # nothing twice
    loaded = zoo.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["shared"]["layers"] == [0, 1, 2]
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_tokenizer_travels_with_the_checkpoint(tmp_path):
    from zoo.data.tokenizer import ByteTokenizer

    model = tiny()
    model.tokenizer = ByteTokenizer()
    model.save_pretrained(tmp_path)
    assert zoo.from_pretrained(tmp_path).tokenizer.decode(ByteTokenizer().encode("héllo")) == "héllo"


def test_shape_mismatch_names_the_tensor(tmp_path):
    tiny().save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["blocks.0.mixer.q_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'blocks.0.mixer.q_proj.weight' has shape \(3, 3\), model expects"):
        zoo.from_pretrained(tmp_path)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    tiny().save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["norm.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensor 'norm.weight'"):
        zoo.from_pretrained(tmp_path)
    weights["norm.weight"], weights["extra"] = torch.ones(32), torch.ones(1)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra'"):
        zoo.from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["d_model"] = 64
    cfg["model"]["head_dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'embed.weight' has shape \\(50, 32\\), model expects \\(50, 64\\)"):
        zoo.from_pretrained(tmp_path)


def test_corrupt_weights_file(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        zoo.from_pretrained(tmp_path)


def test_config_cannot_name_code(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["mixer"] = "os.system"
    cfg["model"]["_target_"] = "os.system"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: key '_target_' \(at model._target_\) is not allowed"):
        zoo.from_pretrained(tmp_path)
    del cfg["model"]["_target_"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(zoo.ConfigError, match="unknown mixer 'os.system'"):
        zoo.from_pretrained(tmp_path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        zoo.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        zoo.from_pretrained(tmp_path / "nope")


def test_interrupted_swap_still_loads(tmp_path):
    """A crash between the two renames of an atomic write leaves only `<dir>.old`: it is used."""
    tiny().save_pretrained(tmp_path / "checkpoint")
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    assert readable_dir(tmp_path / "checkpoint") == tmp_path / "checkpoint.old"
    assert zoo.from_pretrained(tmp_path / "checkpoint").layer_mixers == ["gla", "attn"]


# -- loading safety: nothing named by a checkpoint is imported, instantiated or unpickled -------------------


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """An importable module `zoo_evil_marker` that creates a marker file when imported: a load that ever
    imports what a checkpoint names leaves the file behind."""
    marker = tmp_path / "imported.marker"
    code = tmp_path / "code"
    code.mkdir()
    (code / "zoo_evil_marker.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\ndef boom(*a, **k):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(code))
    yield marker
    assert not marker.exists(), "a checkpoint made the loader import code"
    assert "zoo_evil_marker" not in sys.modules


def edit_config(directory, edit) -> None:
    cfg = json.loads((directory / "config.json").read_text())
    edit(cfg)
    (directory / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda c: c.update({"_target_": "os.system", "args": ["touch pwned"]}), "_target_"),
        (
            lambda c: c["model"]["mixers"]["gla"].update({"_target_": "zoo_evil_marker.boom"}),
            "model.mixers.gla._target_",
        ),
        (
            lambda c: c["model"]["attn"].update({"layers": [{"_target_": "zoo_evil_marker.boom"}]}),
            "model.attn.layers[0]._target_",
        ),
    ],
)
def test_target_key_anywhere_is_refused(tmp_path, marker_module, edit, where):
    tiny().save_pretrained(tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError, match=rf"ckpt/config.json: key '_target_' \(at {re.escape(where)}\)"):
        zoo.from_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m.update({"mixer": "zoo_evil_marker"}),
            "layer 0: unknown mixer 'zoo_evil_marker'; valid mixers: .*gla",
        ),
        (
            lambda m: m.update({"layers": ["gla", "zoo_evil_marker.boom"], "attn": {}}),
            "layer 1: unknown mixer 'zoo_evil_marker.boom'; valid mixers: .*gla",
        ),
        (
            lambda m: m["mixers"].update({"zoo_evil_marker": {}}),
            r"model.mixers has unknown mixer\(s\) \['zoo_evil_marker'\]; valid mixers: .*gla",
        ),
        (lambda m: m.update({"mlp": "zoo_evil_marker"}), "unknown mlp 'zoo_evil_marker'; valid mlps: .*swiglu"),
        (
            lambda m: m.update({"mixer": "parallel", "mixers": {"parallel": {"branches": ["gla", "zoo_evil_marker"]}}}),
            "model.mixers.parallel.branches: unknown mixer 'zoo_evil_marker'; valid mixers: .*gla",
        ),
    ],
)
def test_unknown_names_list_the_valid_ones(tmp_path, marker_module, edit, message):
    tiny().save_pretrained(tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", lambda c: edit(c["model"]))
    with pytest.raises(zoo.ConfigError, match=message) as info:
        zoo.from_pretrained(tmp_path / "ckpt")
    assert isinstance(info.value, CheckpointError) and "ckpt/config.json: " in str(info.value)


def test_truncated_weights_name_the_file(tmp_path):
    tiny().save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is corrupt or unreadable"):
        zoo.from_pretrained(tmp_path / "ckpt")


def sharded(tmp_path):
    model = tiny()
    save_pretrained(model, tmp_path / "ckpt", max_shard_bytes=4000)
    directory = tmp_path / "ckpt"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    return model, directory, index


def test_sharded_round_trip(tmp_path):
    model, directory, index = sharded(tmp_path)
    assert not (directory / "model.safetensors").exists() and len(set(index["weight_map"].values())) > 2
    loaded = zoo.from_pretrained(directory)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_corrupt_index_names_the_file(tmp_path):
    _, directory, _ = sharded(tmp_path)
    path = directory / "model.safetensors.index.json"
    path.write_text(path.read_text()[:40])  # cut off mid-JSON
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is not valid JSON"):
        zoo.from_pretrained(directory)
    path.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json is corrupt: expected"):
        zoo.from_pretrained(directory)


def test_index_cannot_point_outside_the_folder(tmp_path):
    _, directory, index = sharded(tmp_path)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../elsewhere/model.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' maps to '../elsewhere/model.safetensors'"):
        zoo.from_pretrained(directory)


def test_missing_shard_names_the_file(tmp_path):
    _, directory, index = sharded(tmp_path)
    shard = sorted(set(index["weight_map"].values()))[1]
    (directory / shard).unlink()
    with pytest.raises(
        CheckpointError, match=f"{re.escape(str(directory / shard))} is missing: model.safetensors.index.json maps"
    ):
        zoo.from_pretrained(directory)


def test_truncated_shard_names_the_file(tmp_path):
    _, directory, index = sharded(tmp_path)
    shard = directory / sorted(set(index["weight_map"].values()))[-1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(shard))} is corrupt or unreadable"):
        zoo.from_pretrained(directory)


def test_index_and_shards_that_disagree(tmp_path):
    _, directory, index = sharded(tmp_path)
    first, second = sorted(set(index["weight_map"].values()))[:2]
    name = next(n for n, f in index["weight_map"].items() if f == first)
    index["weight_map"][name] = second  # the index now sends this tensor to the wrong shard
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"{second}: tensor '{re.escape(name)}' is mapped to this shard"):
        zoo.from_pretrained(directory)


def test_sharded_mismatched_tensor_names_its_shard(tmp_path):
    _, directory, index = sharded(tmp_path)
    shard = index["weight_map"]["norm.weight"]
    weights = load_file(str(directory / shard))
    weights["norm.weight"] = torch.ones(7)
    save_file(weights, str(directory / shard))
    with pytest.raises(CheckpointError, match=f"{shard}: tensor 'norm.weight' has shape \\(7,\\), model expects"):
        zoo.from_pretrained(directory)
    weights["norm.weight"] = torch.ones(32, dtype=torch.int64)
    save_file(weights, str(directory / shard))
    with pytest.raises(CheckpointError, match=f"{shard}: tensor 'norm.weight' has dtype torch.int64"):
        zoo.from_pretrained(directory)


def test_zoo_never_unpickles():
    """The loaders read safetensors and JSON only: no torch.load / pickle anywhere in the package."""
    root = Path(zoo.__file__).parent
    offenders = [
        f"{path.relative_to(root)}: {word}"
        for path in root.rglob("*.py")
        for word in ("torch.load(", "import pickle", "pickle.load", "weights_only")
        if word in path.read_text()
    ]
    assert offenders == []
