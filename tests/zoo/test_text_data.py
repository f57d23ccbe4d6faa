"""Real text data: packing with eos between documents, the BPE tokenizer (round trip, safe save/load),
`data=hf` on local files (and its offline Hub error), and per-byte validation metrics."""

from __future__ import annotations

import builtins
import importlib
import json
import math
import pickle
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import zoo
from zoo.config import compose
from zoo.data import build_data, build_lm_splits, load_hf_documents, pack_documents, take_documents
from zoo.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer
from zoo.io.results import read_metrics, read_results
from zoo.model.lm import build_model
from zoo.train.loop import evaluate, run_training

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far", "über", "naïve", "日本", "code", "def", "return"]


def make_docs(n: int, seed: int = 0, ascii_only: bool = False) -> list[str]:
    """Deterministic documents of varying length (a few hundred bytes each)."""
    g = torch.Generator().manual_seed(seed)
    words = [w for w in WORDS if w.isascii()] if ascii_only else WORDS
    docs = []
    for i in range(n):
        k = 20 + int(torch.randint(0, 60, (1,), generator=g))
        idx = torch.randint(0, len(words), (k,), generator=g).tolist()
        docs.append(f"Doc {i}: " + " ".join(words[j] for j in idx) + ".\n")
    return docs


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(make_docs(200), vocab_size=320)


def unpack(blocks: torch.Tensor) -> list[int]:
    """The token stream the blocks were cut from: consecutive blocks share one token."""
    return blocks[0].tolist() + [t for b in blocks[1:] for t in b[1:].tolist()]


# ---------------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_packing_fixed_blocks_eos_between_documents_nothing_lost(kind, bpe):
    tok = ByteTokenizer() if kind == "byte" else bpe
    docs = make_docs(30, seed=1)
    docs.insert(3, "a literal <|endoftext|> is text, not a boundary")
    block = 37
    blocks = pack_documents(docs, tok, block)
    assert blocks.dtype == torch.long and blocks.ndim == 2 and blocks.shape[1] == block + 1
    stream = [t for d in docs for t in [*tok.encode(d), tok.eos_token_id]]
    assert len(stream) - 1 - len(blocks) * block < block  # only a tail shorter than one block is dropped
    got = unpack(blocks)
    assert got == stream[: len(got)]  # in order: nothing lost, duplicated or reordered
    # eos separates documents: the text between eos tokens is each document, exactly
    pieces, cur = [], []
    for t in got:
        if t == tok.eos_token_id:
            pieces.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert pieces == docs[: len(pieces)] and len(pieces) >= len(docs) - 2
    assert torch.equal(pack_documents(docs, tok, block), blocks)  # deterministic


def test_take_documents_caps():
    docs = ["aa", "", "bbb", "cé", "dd"]
    assert take_documents(docs) == ["aa", "bbb", "cé", "dd"]
    assert take_documents(docs, max_docs=2) == ["aa", "bbb"]
    assert take_documents(docs, max_bytes=6) == ["aa", "bbb", "c"]  # "é" is 2 bytes: never half a character
    assert take_documents(iter(docs), max_bytes=5) == ["aa", "bbb"]
    endless = (f"doc {i}" for i in range(10**12))
    assert len(take_documents(endless, max_docs=3)) == 3  # a stream is read only as far as needed
    with pytest.raises(ValueError, match="max_docs must be >= 1"):
        take_documents(docs, max_docs=0)


# ---------------------------------------------------------------------------------------------------- BPE


TEXTS = ["", "hello world", "héllo ✓ 🐍\n\ttabs  and   spaces", "\x00 nul", "literal <|endoftext|> inside", "日本語"]


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trip(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.eos_token_id not in ids  # no special tokens added, a literal eos string is plain text
    assert bpe.decode(ids) == text


def test_bpe_learns_merges_deterministically(bpe):
    assert bpe.vocab_size == 320 and bpe.eos_token_id == 0
    text = "the cat sat on the mat"
    assert len(bpe.encode(text)) < len(text.encode()) / 2  # merges compress the training vocabulary
    assert BPETokenizer.train(make_docs(200), vocab_size=320) == bpe  # same documents, same tokenizer
    assert bpe.decode([*bpe.encode("ab"), bpe.eos_token_id, 10_000]) == "ab"  # eos and padding ids skipped
    lengths = bpe.byte_lengths()
    assert lengths[bpe.eos_token_id] == 1
    assert all(lengths[i] == len(bpe.decode([i]).encode()) for i in bpe.encode(text))
    with pytest.raises(ValueError, match="above 257"):
        BPETokenizer.train(["abc"], vocab_size=257)


def test_bpe_save_load(tmp_path, bpe):
    path = bpe.save(tmp_path)
    d = json.loads(path.read_text())  # one plain-JSON file
    assert d["type"] == "bpe" and d["vocab_size"] == 320 and d["hf"]["model"]["type"] == "BPE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]

    # Loading imports nothing new and unpickles nothing.
    importlib.import_module("tokenizers")
    real_import = builtins.__import__

    def no_new_imports(name, *args, **kwargs):
        if name not in sys.modules:
            raise AssertionError(f"loading a tokenizer imported {name}")
        return real_import(name, *args, **kwargs)

    def no_pickle(*args, **kwargs):
        raise AssertionError("loading a tokenizer unpickled")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "__import__", no_new_imports)
        mp.setattr(pickle, "loads", no_pickle)
        mp.setattr(pickle, "load", no_pickle)
        back = load_tokenizer(tmp_path)
    assert back == bpe and back.encode("hello world") == bpe.encode("hello world")


def tamper(tmp_path, bpe, edit) -> None:
    d = bpe.to_dict()
    edit(d)
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(_target_="os.system"), r"'_target_' \(at _target_\) is not allowed"),
        (lambda d: d["hf"]["decoder"].update(_target_="os.system"), r"'_target_' \(at hf.decoder._target_\)"),
        (lambda d: d.update(merges=[]), r"unknown keys \['merges'\]"),
        (lambda d: d["hf"].update(script="import os"), r"unknown keys \['script'\] in 'hf'"),
        (lambda d: d["hf"]["pre_tokenizer"].update(type="os.system"), "not a valid Hugging Face tokenizer"),
        (lambda d: d["hf"]["model"].update(type="WordPiece"), "with a BPE model"),
        (lambda d: d.update(vocab_size=500), "disagree with its 'hf' vocabulary"),
    ],
    ids=["target", "nested-target", "unknown-key", "unknown-hf-key", "bad-component", "not-bpe", "vocab"],
)
def test_bpe_tampered_file_rejected(tmp_path, bpe, edit, message):
    tamper(tmp_path, bpe, edit)
    with pytest.raises(ValueError, match=message):
        load_tokenizer(tmp_path)


def test_checkpoint_carries_bpe_tokenizer(tmp_path, bpe):
    cfg = compose(["model=gla", "model.d_model=32", "model.head_dim=8", "model.n_layers=1", "model.vocab_size=400"])
    model = build_model(cfg.model)
    model.tokenizer = bpe
    model.save_pretrained(tmp_path)
    back = zoo.from_pretrained(tmp_path)
    assert back.tokenizer == bpe
    tamper(tmp_path, bpe, lambda d: d["hf"]["model"].update(_target_="os.system"))
    with pytest.raises(Exception, match="_target_"):
        zoo.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------- data=text


def write_corpus(folder, n=40, ascii_only=False):
    folder.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(make_docs(n, seed=2, ascii_only=ascii_only)):
        (folder / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


def test_text_bpe_bundle(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", ascii_only=True)
    kw = dict(seq_len=32, paths=[str(corpus)], val_fraction=0.2, tokenizer="bpe", bpe_vocab_size=300)
    b = build_data("text", **kw)
    assert isinstance(b.tokenizer, BPETokenizer) and b.vocab_size == b.tokenizer.vocab_size <= 300
    assert b.metric == "ppl" and b.train[0].shape[1] == 32 and b.eval_bytes.shape == (len(b.eval[0]),)
    # every eval label is counted once: its UTF-8 bytes (ASCII text: one per character), eos as 1
    labels = b.eval[1].flatten().tolist()
    n_eos = labels.count(b.tokenizer.eos_token_id)
    assert int(b.eval_bytes.sum()) == len(b.tokenizer.decode(labels).encode()) + n_eos > len(labels)
    b2 = build_data("text", **kw)
    assert b2.tokenizer == b.tokenizer and torch.equal(b2.train[0], b.train[0]) and torch.equal(b2.eval[0], b.eval[0])
    with pytest.raises(ValueError, match=r"tokenizer=bpe: vocab_size must be 300 \(bpe_vocab_size\), got 257"):
        build_data("text", **kw, vocab_size=257)
    with pytest.raises(ValueError, match=r"tokenizer=byte: vocab_size must be 257, got 300"):
        build_data("text", **{**kw, "tokenizer": "byte"}, vocab_size=300)
    with pytest.raises(ValueError, match=r"unknown tokenizer 'wordpiece'; choose one of \['bpe', 'byte'\]"):
        build_data("text", **{**kw, "tokenizer": "wordpiece"})


def test_conf_vocab_size_follows_tokenizer():
    assert compose(["data=text"]).model.vocab_size == 257
    cfg = compose(["data=text", "data.tokenizer=bpe", "data.bpe_vocab_size=1024"])
    assert cfg.data.vocab_size == cfg.model.vocab_size == 1024
    assert compose(["data=hf", "data.tokenizer=bpe"]).model.vocab_size == 4096


# ---------------------------------------------------------------------------------------------------- data=hf


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def test_load_hf_documents_local_files(tmp_path):
    docs = make_docs(20, seed=3)
    jsonl = write_jsonl(tmp_path / "train.jsonl", docs)
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.table({"body": docs}), parquet)
    cache = str(tmp_path / "cache")
    assert load_hf_documents(str(jsonl), cache_dir=cache) == docs
    assert load_hf_documents(str(jsonl), streaming=True, max_docs=5) == docs[:5]
    assert load_hf_documents(str(parquet), text_field="body", cache_dir=cache, max_docs=3) == docs[:3]
    assert load_hf_documents("json", data_files=str(jsonl), cache_dir=cache, max_bytes=20) == [docs[0][:20]]
    with pytest.raises(ValueError, match=r"no column 'text' \(data.text_field\); columns: \['body'\]"):
        load_hf_documents(str(parquet), cache_dir=cache)


def test_build_data_hf_named_validation_split(tmp_path):
    train, val = make_docs(30, seed=6), make_docs(8, seed=7)
    files = {
        "train": str(write_jsonl(tmp_path / "a.jsonl", train)),
        "validation": str(write_jsonl(tmp_path / "b.jsonl", val)),
    }
    b = build_data(
        "hf", path="json", data_files=files, val_split="validation", seq_len=16, cache_dir=str(tmp_path / "c")
    )
    assert b.metric == "ppl" and b.vocab_size == 257 and b.eval_bytes.sum() == b.eval[1].numel()
    stream = unpack(torch.cat([b.eval[0][:, :1], b.eval[1]], dim=1))  # the validation split's own text
    text_bytes = [t for t in stream if t != b.tokenizer.eos_token_id]
    assert text_bytes == list("".join(val).encode())[: len(text_bytes)]


def test_hf_hub_name_offline_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # Offline mode makes the failure immediate (without it, the same error follows after network retries).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError) as info:
        build_data("hf", path="roneneldan/TinyStories", seq_len=64)
    message = str(info.value)
    assert "\n" not in message
    assert "data.path='roneneldan/TinyStories': could not load this dataset from the Hugging Face Hub" in message
    assert "offline, use data=text (the offline corpus) or local files" in message
    with pytest.raises(ValueError, match="bpe_vocab_size must be an integer above 257, got 100"):  # before the Hub
        build_data("hf", path="roneneldan/TinyStories", seq_len=64, tokenizer="bpe", bpe_vocab_size=100)


def test_zoo_train_data_hf_reports_bits_per_byte(tmp_path):
    data = write_jsonl(tmp_path / "stories.jsonl", make_docs(120, seed=4))
    cfg = compose(
        [
            "model=gla",
            "model.d_model=32",
            "model.head_dim=8",
            "model.n_layers=1",
            "data=hf",
            f"data.path={data}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.tokenizer=bpe",
            "data.bpe_vocab_size=300",
            "data.seq_len=32",
            "data.val_fraction=0.1",
            "train.batch_size=8",
            "train.max_steps=4",
            "train.warmup_steps=1",
            "train.eval_every=4",
            "train.log_every=2",
            "eval.batch_size=16",
        ]
    )
    assert cfg.model.vocab_size == 300
    run_dir = tmp_path / "run"
    metrics = run_training(cfg, run_dir)
    for key in ("val/loss", "val/ppl", "val/bpb", "val/ppl_byte"):
        assert math.isfinite(metrics[key]), key
    # BPE tokens carry more than one byte each, so the per-byte loss is below the per-token loss
    assert metrics["val/bpb"] * math.log(2) < metrics["val/loss"]
    assert math.isclose(metrics["val/ppl_byte"], 2 ** metrics["val/bpb"], rel_tol=1e-9)
    assert any("val/bpb" in r for r in read_metrics(run_dir))
    assert "val/bpb" in read_results(run_dir)["metrics"]
    assert zoo.from_pretrained(run_dir / "checkpoint").tokenizer == BPETokenizer.from_dict(
        json.loads((run_dir / "checkpoint" / "tokenizer.json").read_text())
    )


# ---------------------------------------------------------------------------------------------------- metrics


def tiny_eval(bundle, vocab_size):
    model_args = ["model=gla", "model.d_model=32", "model.head_dim=8", "model.n_layers=1"]
    cfg = compose([*model_args, f"model.vocab_size={vocab_size}", "eval.max_examples=null", "eval.batch_size=4"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    return evaluate(model, bundle, "text", cfg.eval, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))


def test_per_byte_metrics_equal_per_token_for_byte_tokens(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")  # includes multi-byte characters
    b = build_data("text", seq_len=32, paths=[str(corpus)], val_fraction=0.2)
    assert torch.equal(b.eval_bytes, torch.full((len(b.eval[0]),), 32))  # one byte per byte token
    m = tiny_eval(b, 257)
    assert m["val/ppl_byte"] == pytest.approx(m["val/ppl"], rel=1e-12)
    assert m["val/bpb"] == pytest.approx(m["val/loss"] / math.log(2), rel=1e-12)


def test_per_byte_metrics_use_the_bytes_behind_the_tokens(bpe):
    docs = make_docs(60, seed=5)
    splits = build_lm_splits(docs[:40], docs[40:], bpe, block_size=16)
    per_block = splits["val_bytes"]
    expected = torch.tensor([sum(bpe.byte_lengths()[t] for t in row) for row in splits["val"][1].tolist()])
    assert torch.equal(per_block, expected) and (per_block > 16).all()
    bundle = type("B", (), {"eval": splits["val"], "eval_bytes": per_block, "metric": "ppl", "tokenizer": bpe})()
    m = tiny_eval(bundle, 400)
    ratio = int(per_block.sum()) / splits["val"][1].numel()  # bytes per token
    assert m["val/bpb"] * math.log(2) == pytest.approx(m["val/loss"] / ratio, rel=1e-9)
