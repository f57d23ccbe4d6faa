"""Checkpoints: bit-exact round trip, clear errors for mismatched or corrupt files, no code from files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.checkpoint import CheckpointError, readable_dir
from zoo.config import compose


def tiny(arch="hybrid_gla", *overrides):
    cfg = compose([f"model={arch}", "model.d_model=32", "model.head_dim=8", "model.n_layers=2",
                   "model.attn.layers=[]" if arch != "hybrid_gla" else "model.attn.layers=[1]",
                   "data.vocab_size=50", *overrides])  # fmt: skip
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


def test_tokenizer_travels_with_the_checkpoint(tmp_path):
    from zoo.tokenizer import ByteTokenizer

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
    with pytest.raises(zoo.ConfigError, match="unknown model config keys \\['_target_'\\]"):
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
