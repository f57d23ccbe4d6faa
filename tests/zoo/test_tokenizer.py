"""Tokenizers: round trips, special ids, save/load through plain JSON, and their errors."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.data.tokenizer import (
    TOKENIZERS,
    ByteTokenizer,
    IntTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

TEXTS = {"empty": "", "ascii": "hello world", "utf8": "héllo ✓ 🐍\n\ttabs", "nul": "\x00 nul"}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))  # no special tokens added
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_byte_special_ids_and_invalid_utf8():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_token_id) == (257, 256)
    assert tok.decode([104, 105, 256, 33]) == "hi!"  # eos skipped
    assert tok.decode(torch.tensor([104, 105])) == "hi"  # tensors are fine
    assert tok.decode([0xFF, 104]) == "\ufffdh"  # invalid UTF-8 replaced, not raised
    with pytest.raises(ValueError, match="negative"):
        tok.decode([-1])


def test_int_round_trip_and_errors():
    tok = IntTokenizer(32)
    assert tok.encode("3 17 5") == [3, 17, 5]
    assert tok.encode("  3\n17 ") == [3, 17]
    assert tok.decode([3, 17, 5]) == "3 17 5"
    assert tok.decode(torch.tensor([0, 31])) == "0 31"
    assert tok.eos_token_id is None and tok.vocab_size == 32
    with pytest.raises(ValueError, match=r"\[0, 32\).*\[32\]"):
        tok.encode("1 32")
    with pytest.raises(ValueError, match=r"\[-1\]"):
        tok.encode("-1")
    with pytest.raises(ValueError, match="integers.*'x'"):
        tok.encode("1 x")
    with pytest.raises(ValueError, match="vocab_size"):
        IntTokenizer(0)


@pytest.mark.parametrize("tok", [ByteTokenizer(), IntTokenizer(8192)], ids=["byte", "int"])
def test_save_load(tmp_path, tok):
    path = tok.save(tmp_path / "ckpt")
    assert path.name == "tokenizer.json"
    d = json.loads(path.read_text())  # plain JSON
    assert d["type"] == tok.type and d["vocab_size"] == tok.vocab_size
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.json"]  # no temporary file left
    back = load_tokenizer(tmp_path / "ckpt")
    assert back == tok and type(back) is type(tok)
    assert isinstance(back, Tokenizer)
    assert back.decode(back.encode("1 2 3")) == "1 2 3"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "sentencepiece", "vocab_size": 3}))
    with pytest.raises(ValueError, match=r"unknown tokenizer type 'sentencepiece'.*\['bpe', 'byte', 'hf', 'int'\]"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "int", "vocab_size": 4, "merges": []}))
    with pytest.raises(ValueError, match="unknown keys \\['merges'\\]"):
        load_tokenizer(tmp_path)


def test_registry():
    assert sorted(TOKENIZERS) == ["bpe", "byte", "hf", "int"]
    assert build_tokenizer("byte") == ByteTokenizer()
    assert build_tokenizer("int", vocab_size=10) == IntTokenizer(10)
    bpe = build_tokenizer("bpe", documents=["one two three two one"] * 5, vocab_size=270)
    assert bpe.type == "bpe" and bpe.decode(bpe.encode("two one")) == "two one"
    with pytest.raises(ValueError, match=r"unknown tokenizer 'wordpiece'; choose one of \['bpe', 'byte', 'int'\]"):
        build_tokenizer("wordpiece")
