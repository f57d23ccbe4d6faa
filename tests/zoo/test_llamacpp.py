"""llama.cpp as a zoo-bench peer: job names, the placeholder vocabulary, and, when llama-cpp-python is installed
(CI does not build it: it compiles llama.cpp), the same tiny transformers checkpoint through llama.cpp's own
converter and runtime gives the zoo import's logits, and `zoo-bench path=` writes its rows next to ours."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import zoo
from tests.helpers import assert_close
from tests.test_bench import TINY
from zoo.bench import llamacpp
from zoo.bench.cli import plan, run
from zoo.config import from_mapping
from zoo.errors import ZooError
from zoo.schemas import BenchConfig

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed (pip install it)")
VOCAB = 320  # > 259 pieces of the placeholder vocabulary's fixed part


def test_job_names_round_trip_and_skip_flash_attention_without_attention():
    names = llamacpp.job_names("/ckpt", ["f32", "q8_0"], [False, True], has_attention=True)
    assert names == [
        "llama.cpp:f32:/ckpt",
        "llama.cpp:f32+fa:/ckpt",
        "llama.cpp:q8_0:/ckpt",
        "llama.cpp:q8_0+fa:/ckpt",
    ]
    assert [llamacpp.parse_job(n) for n in names[1:3]] == [("f32", True, "/ckpt"), ("q8_0", False, "/ckpt")]
    assert llamacpp.job_names("/ckpt", ["f16"], [False, True], has_attention=False) == ["llama.cpp:f16:/ckpt"]


def test_placeholder_vocabulary_loads_with_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    llamacpp.placeholder_tokenizer(tmp_path, VOCAB)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.vocab_size() == VOCAB
    assert [sp.id_to_piece(i) for i in (0, 1, 2, 3, 13, 259)] == ["<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "▁t0"]


def test_placeholder_bpe_vocabulary_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    llamacpp.placeholder_bpe(tmp_path, VOCAB)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == VOCAB and max(tok.get_vocab().values()) == VOCAB - 1
    assert tok.convert_ids_to_tokens(tok.encode(" t", add_special_tokens=False)) == ["\u0120t"]  # the one merge
    with pytest.raises(ZooError, match="at least 257 tokens"):
        llamacpp.placeholder_bpe(tmp_path, 100)


def tiny_checkpoint(kind: str, folder: Path) -> Path:
    """A tiny random checkpoint of `kind`, with sizes that are multiples of q8_0's 32-wide blocks; the hybrids have
    4 layers, attention in the last."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2, "tie_word_embeddings": True}
    dense = {**common, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2}
    hybrid = {**dense, "num_hidden_layers": 4}
    mamba = {"mamba_n_heads": 4, "mamba_d_head": 32, "mamba_d_state": 32, "mamba_n_groups": 1}
    linear = {"linear_num_key_heads": 1, "linear_key_head_dim": 32, "linear_value_head_dim": 32}
    name, fields = {
        "llama": ("LlamaConfig", {**dense, "max_position_embeddings": 512}),
        "qwen3": ("Qwen3Config", {**dense, "head_dim": 32}),
        "mamba2": ("Mamba2Config", {**common, "num_heads": 4, "head_dim": 32, "state_size": 32, "n_groups": 1}),
        # full rotary: with transformers' default partial_rotary_factor 0.5, llama.cpp's Bamba gives other logits
        # (0.6-0.9% of the largest at this size; its converter does not read rope_parameters)
        "bamba": (
            "BambaConfig",
            {**hybrid, **mamba, "attn_layer_indices": [3]}
            | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}},
        ),
        "nemotron_h": (
            "NemotronHConfig",
            {**hybrid, "head_dim": 32, "mamba_num_heads": 4, "mamba_head_dim": 32, "ssm_state_size": 32}
            | {"n_groups": 1, "layers_block_type": ["linear_attention"] * 3 + ["full_attention"]},
        ),
        "falcon_h1": ("FalconH1Config", {**hybrid, **mamba, "mamba_d_ssm": 128, "head_dim": 32}),
        # llama.cpp loads Qwen3.5 only with value heads as wide as key heads (as released)
        "qwen3_5": (
            "Qwen3_5TextConfig",
            {**hybrid, **linear, "head_dim": 32, "linear_num_value_heads": 2}
            | {"layer_types": ["linear_attention"] * 3 + ["full_attention"]},
        ),
    }[kind]
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, name)(**fields))
    with torch.no_grad():  # random init at std 0.02 gives near-constant logits: nothing to compare
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the llama.cpp process takes this thread count: spinning threads on a busy machine
    yield
    torch.set_num_threads(threads)


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["llama", "qwen3", "mamba2", "bamba", "nemotron_h", "falcon_h1", "qwen3_5"])
def test_same_checkpoint_gives_the_zoo_logits_in_llama_cpp(kind, tmp_path, one_thread):
    pytest.importorskip("sentencepiece")
    folder = tiny_checkpoint(kind, tmp_path / kind)
    gguf, note = llamacpp.to_gguf(folder, "f32", VOCAB, None)
    assert "placeholder vocabulary" in note
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(1))
    cell = llamacpp.time_gguf(gguf, ids, gen=3, prefill_chunk=16, flash_attn=False, logits=True, kv_f32=True)
    ours = zoo.from_pretrained(folder).eval()(ids).logits[0, -1]
    assert_close(torch.tensor(cell["logits"]), ours, rtol=0, atol=1e-4 * ours.abs().max())
    assert cell["prefill_s"] > 0 and cell["decode_s"] > 0 and cell["n_vocab"] == VOCAB


@needs_llama_cpp
def test_zoo_bench_writes_llama_cpp_rows_next_to_ours(tmp_path, one_thread):
    pytest.importorskip("sentencepiece")
    folder = tiny_checkpoint("llama", tmp_path / "llama")
    cfg = TINY | {
        "archs": None,
        "sizes": [],
        "vocab_size": VOCAB,
        "gen_tokens": 3,
        "quantize": ["none", "int8"],
        "llamacpp": ["f32", "q8_0"],
    }
    rows, _ = run(cfg, tmp_path / "out", path=str(folder))
    by_arch = {}
    for r in rows:
        by_arch.setdefault(r["arch"], []).append(r)
    assert set(by_arch) == {
        str(folder),
        f"{folder}+int8",
        f"transformers:{folder}",
        f"llama.cpp:f32:{folder}",
        f"llama.cpp:q8_0:{folder}",
    }
    for label in (f"llama.cpp:f32:{folder}", f"llama.cpp:q8_0:{folder}"):
        measured = [r for r in by_arch[label] if r["batch"] == 1]
        assert [r["prompt_len"] for r in measured] == [16, 48]
        assert all(r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 for r in measured)
        # q8_0 crashed llama-cpp-python 0.3.36 with its AMX / repacked buffers on this AVX-512 + AMX machine: where
        # the runner falls back to running without them, every row of that runner says so
        fallback = [("extra buffer types" in r["note"]) for r in measured]
        assert fallback in ([False, False], [True, True])
        (batch2,) = [r for r in by_arch[label] if r["batch"] == 2]
        assert batch2["note"] == "skipped: llama.cpp rows are measured at batch 1"
    assert "llama.cpp:q8_0" in (tmp_path / "out" / "bench.md").read_text()


def test_missing_llama_cpp_leaves_its_rows_out_with_a_note(tmp_path, monkeypatch, capsys):
    folder = tiny_checkpoint("llama", tmp_path / "llama")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    settings = TINY | {"sizes": [], "vocab_size": VOCAB, "prompt_lens": [16], "llamacpp": ["f32"]}
    cfg = from_mapping(BenchConfig, settings, "bench")
    labels = [job.label for job in plan(cfg, str(folder))]
    assert labels == [str(folder), f"transformers:{folder}"]
    assert "llama-cpp-python is not installed, so the llama.cpp rows are left out" in capsys.readouterr().err


@pytest.mark.parametrize(("kind", "with_fa"), [("falcon_h1", True), ("mamba2", False), ("bamba", True)])
def test_flash_attention_rows_wherever_a_layer_has_attention(kind, with_fa, tmp_path, monkeypatch):
    """Falcon-H1's attention is a branch of the `parallel` mixer: it still gets llama.cpp's flash-attention rows."""
    folder = tiny_checkpoint(kind, tmp_path / kind)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp" else real(name, *a)
    )
    settings = TINY | {"sizes": [], "vocab_size": VOCAB, "prompt_lens": [16], "llamacpp": ["f32"]}
    settings["llamacpp_flash_attn"] = [False, True]
    labels = [job.label for job in plan(from_mapping(BenchConfig, settings, "bench"), str(folder))]
    assert (f"llama.cpp:f32+fa:{folder}" in labels) == with_fa and f"llama.cpp:f32:{folder}" in labels
