"""Data: MQAR layout (Zoology's), determinism and constraints; text corpus, split and packing; the registry;
resumable batching."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch

import zoo.data.mqar as mqar_module
from zoo.data import (
    DATASETS,
    IGNORE_INDEX,
    build_data,
    build_mqar_splits,
    build_text_splits,
    default_corpus_files,
    iterate_batches,
    load_text_corpus,
    pack_documents,
    split_documents,
)
from zoo.data.mqar import mqar
from zoo.data.tokenizer import ByteTokenizer, IntTokenizer
from zoo.errors import ConfigError

# ---------------------------------------------------------------------------------------------------- MQAR


def check_mqar_layout(x: torch.Tensor, y: torch.Tensor, V: int, T: int, n: int, random_non_queries: bool):
    """Every structural property of Zoology's layout, on each example."""
    N, ctx, half = len(x), 2 * n, V // 2
    assert x.shape == y.shape == (N, T) and x.dtype == y.dtype == torch.long
    keys, values = x[:, 0:ctx:2], x[:, 1:ctx:2]
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < V)).all()
    for row_keys, row_values in zip(keys, values, strict=True):  # distinct within an example
        assert len(set(row_keys.tolist())) == n and len(set(row_values.tolist())) == n
    labelled = y != IGNORE_INDEX
    assert (labelled.sum(1) == n).all()  # exactly one query per key
    assert not labelled[:, :ctx].any()  # no label inside the kv prefix
    rows, pos = labelled.nonzero(as_tuple=True)
    assert ((pos - ctx) % 2 == 0).all() and (pos <= ctx + 2 * ((T - ctx) // 2 - 1)).all()
    # the query token is a key from the prefix, and its label is that key's value
    match = keys[rows] == x[rows, pos][:, None]  # (num_labels, n)
    assert (match.sum(1) == 1).all()
    assert torch.equal(values[rows][match], y[rows, pos])
    queried = torch.zeros(N, n, dtype=torch.long).index_put_((rows, match.float().argmax(1)), torch.tensor(1), True)
    assert (queried == 1).all()  # every key queried once
    filler = torch.ones_like(labelled)
    filler[:, :ctx] = False
    filler &= ~labelled
    if random_non_queries:
        assert ((x[filler] >= 0) & (x[filler] < V)).all()
    else:
        assert (x[filler] == 0).all()


@pytest.mark.parametrize("random_non_queries", [True, False], ids=["random", "zeros"])
@pytest.mark.parametrize(
    "V,T,n", [(64, 32, 4), (16, 16, 2), (8192, 64, 16), (40, 33, 3), (12, 16, 4)], ids=lambda v: str(v)
)
def test_mqar_layout(V, T, n, random_non_queries):
    x, y = mqar(V, T, n, num_examples=300, seed=3, random_non_queries=random_non_queries)
    check_mqar_layout(x, y, V, T, n, random_non_queries)


def test_mqar_docstring_example():
    result = doctest.testmod(mqar_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


def test_mqar_random_fill_only_replaces_zeros():
    x0, y0 = mqar(64, 32, 4, 200, seed=1, random_non_queries=False)
    x1, y1 = mqar(64, 32, 4, 200, seed=1, random_non_queries=True)
    assert torch.equal(y0, y1) and torch.equal(x1[x0 != 0], x0[x0 != 0])
    fill = x1[x0 == 0]
    assert fill.min() >= 0 and fill.max() < 64 and len(fill.unique()) > 50  # uniform over the whole vocabulary


def test_mqar_gap_power_law():
    """The first prefix key's query gap g is the first weighted draw: P(g) ∝ (g + 1) ** (power_a - 1)."""
    V, T, n, N, a = 256, 64, 4, 4000, 0.01
    x, y = mqar(V, T, n, N, seed=0, power_a=a)
    first_key = x[:, :1]
    pos = ((y != IGNORE_INDEX) & (x == first_key)).float().argmax(1)
    gaps = (pos - 2 * n) // 2
    space = (T - 2 * n) // 2
    p = np.arange(1, space + 1) ** (a - 1.0)
    p /= p.sum()
    freq = np.bincount(gaps.numpy(), minlength=space) / N
    sigma = np.sqrt(p * (1 - p) / N)
    assert (np.abs(freq - p) < 5 * sigma + 1e-3).all()
    assert freq[0] > 2 * freq[space // 2]  # short gaps likelier
    _, y_uniform = mqar(V, T, n, N, seed=0, power_a=1.0)  # power_a = 1 is uniform
    gaps_u = ((y_uniform != IGNORE_INDEX).nonzero()[:, 1] - 2 * n) // 2
    counts = np.bincount(gaps_u.numpy(), minlength=space)
    assert counts.min() > 0.8 * counts.mean()


def test_mqar_deterministic():
    a = mqar(128, 64, 8, 100, seed=7)
    b = mqar(128, 64, 8, 100, seed=7)
    c = mqar(128, 64, 8, 100, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mqar_splits():
    s = build_mqar_splits(
        vocab_size=128,
        seq_len=64,
        num_kv_pairs=8,
        train_size=100,
        test_size=50,
        seed=7,
        power_a=0.01,
        random_non_queries=True,
        mix_kv_pairs=[],
    )
    (xtr, ytr), (xte, yte) = s["train"], s["test"]
    assert xtr.shape == (100, 64) and xte.shape == (50, 64)
    x, y = mqar(128, 64, 8, 100, seed=7)
    assert torch.equal(xtr, x) and torch.equal(ytr, y)  # train is exactly mqar(seed)
    assert not torch.equal(xtr[:50], xte)
    train_rows = {tuple(r) for r in xtr.tolist()}
    assert not any(tuple(r) in train_rows for r in xte.tolist())
    for seed in (8, 9):  # the test set is no other seed's train set
        assert not torch.equal(mqar(128, 64, 8, 50, seed=seed)[0], xte)
    check_mqar_layout(xte, yte, 128, 64, 8, True)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(num_kv_pairs=0), r"num_kv_pairs >= 1, got num_kv_pairs=0"),
        (dict(num_kv_pairs=9, seq_len=35), r"4 \* num_kv_pairs <= seq_len .* got 4 \* 9 > 35"),
        (dict(num_kv_pairs=4, vocab_size=9), r"num_kv_pairs <= vocab_size // 2 - 1 .* got num_kv_pairs=4 > 3"),
        (dict(power_a=0.0), r"power_a > 0, got power_a=0.0"),
        (dict(power_a=-1.0), r"power_a > 0, got power_a=-1.0"),
        (dict(power_a=math.inf), r"finite power_a"),
        (dict(num_examples=-1), r"num_examples >= 0, got num_examples=-1"),
        (dict(seed=-1), r"seed must be a non-negative integer, got -1"),
    ],
    ids=["no-pairs", "too-short", "too-few-keys", "power0", "power-neg", "power-inf", "neg-examples", "neg-seed"],
)
def test_mqar_rejects_impossible(kw, message):
    args = dict(vocab_size=64, seq_len=64, num_kv_pairs=4, num_examples=2, seed=0) | kw
    with pytest.raises(ValueError, match=message):
        mqar(**args)


def test_mqar_edge_settings_accepted():
    x, y = mqar(8, 4, 1, 5, seed=0)  # smallest: V // 2 - 1 = 3 keys, T = 4n, V > T not required
    check_mqar_layout(x, y, 8, 4, 1, True)
    assert mqar(64, 32, 4, 0, seed=0)[0].shape == (0, 32)


# ---------------------------------------------------------------------------------------------------- text


def test_default_corpus_files():
    files = default_corpus_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts or "dist-packages" in f.parts for f in files)
    assert files == default_corpus_files()


def test_load_text_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "b.md").write_text("# beta")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "gamma"}) + "\n\n" + json.dumps({"text": "délta"}) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("")  # empty: dropped
    assert load_text_corpus(tmp_path) == ["alpha text", "# beta", "gamma", "délta"]
    assert load_text_corpus(str(tmp_path), glob="*.txt") == ["alpha text"]
    assert load_text_corpus([tmp_path / "c.jsonl", tmp_path / "a.txt"]) == ["gamma", "délta", "alpha text"]
    assert load_text_corpus(tmp_path, max_bytes=14) == ["alpha text", "# be"]
    assert load_text_corpus(tmp_path, max_bytes=23) == ["alpha text", "# beta", "gamma", "d"]  # no half "é"
    default = load_text_corpus(max_bytes=10_000)
    assert sum(len(d.encode()) for d in default) == 10_000
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_corpus([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="no text files"):
        load_text_corpus(tmp_path, glob="*.nothing")
    (tmp_path / "bad.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'text'"):
        load_text_corpus(tmp_path / "bad.jsonl")


def test_split_documents():
    docs = [f"doc {i}" for i in range(100)]
    train, val = split_documents(docs, 0.1, seed=0)
    assert (train, val) == split_documents(docs, 0.1, seed=0)
    assert len(val) == 10 and sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert train == [d for d in docs if d in set(train)]  # corpus order kept
    assert split_documents(docs, 0.1, seed=1)[1] != val
    assert len(split_documents(docs[:3], 0.01, seed=0)[1]) == 1
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        split_documents(docs, 0.0, seed=0)


def test_pack_documents_round_trip():
    tok = ByteTokenizer()
    docs = ["Hello, world! This is document one.", "ünïcode second document", "third"]
    stream = [i for d in docs for i in [*d.encode(), tok.eos_token_id]]
    bs = 7
    blocks = pack_documents(docs, tok, bs)
    assert blocks.dtype == torch.long and blocks.shape == ((len(stream) - 1) // bs, bs + 1)
    for i, block in enumerate(blocks.tolist()):
        assert block == stream[i * bs : (i + 1) * bs + 1]  # consecutive blocks share one token
    assert tok.decode(blocks[0]) == docs[0][:8] and tok.decode(blocks[2]) == docs[0][14:22]
    decoded = "".join(tok.decode(b[:-1]) for b in blocks)  # inputs tile the stream
    assert decoded == "".join(docs)[: len(decoded)]
    ints = pack_documents(["1 2 3", "4 5"], IntTokenizer(10), 2)  # no eos: plain concatenation
    assert ints.tolist() == [[1, 2, 3], [3, 4, 5]]


def test_build_text_splits(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.txt").write_text(f"document number {i} " * 20)
    corpus = dict(seed=0, glob=None, max_bytes=None)
    s = build_text_splits(ByteTokenizer(), block_size=32, val_fraction=0.1, paths=[tmp_path], **corpus)
    (xtr, ytr), (xva, _) = s["train"], s["val"]
    assert xtr.shape[1] == ytr.shape[1] == 32 and xva.shape[1] == 32
    assert torch.equal(xtr[:, 1:], ytr[:, :-1]) and torch.equal(xtr[1:, 0], ytr[:-1, -1])
    s2 = build_text_splits(ByteTokenizer(), block_size=32, val_fraction=0.1, paths=[tmp_path], **corpus)
    assert torch.equal(s2["val"][0], xva)
    too_small_val = r"too small: the val split has 2 documents, \d+ bytes, .* block of 1001 tokens"
    with pytest.raises(ValueError, match=too_small_val):
        build_text_splits(ByteTokenizer(), block_size=1000, val_fraction=0.1, paths=tmp_path, **corpus)  # ~6.6k
    with pytest.raises(ValueError, match=r"too small: the train split .* block of 10001 tokens"):
        build_text_splits(ByteTokenizer(), block_size=10_000, val_fraction=0.1, paths=tmp_path, **corpus)


# ---------------------------------------------------------------------------------------------------- registry


def test_mqar_mix_of_kv_counts():
    kw = dict(vocab_size=256, seq_len=64, train_size=101, test_size=30, seed=3, power_a=0.01, random_non_queries=False)
    s = build_mqar_splits(num_kv_pairs=4, mix_kv_pairs=[8, 16], **kw)
    for (x, y), size in ((s["train"], 101), (s["test"], 30)):
        n = (y != IGNORE_INDEX).sum(1)  # a row's kv count is its number of queries
        counts = {k: int((n == k).sum()) for k in (4, 8, 16)}
        assert sum(counts.values()) == size and max(counts.values()) - min(counts.values()) <= 1
        for k in (4, 8, 16):
            check_mqar_layout(x[n == k], y[n == k], 256, 64, k, False)
        assert not (n[: size // 3] == 4).all()  # shuffled, not in blocks
    train_rows = {tuple(r) for r in s["train"][0].tolist()}
    assert not any(tuple(r) in train_rows for r in s["test"][0].tolist())
    again = build_mqar_splits(num_kv_pairs=4, mix_kv_pairs=[8, 16], **kw)
    assert torch.equal(again["train"][0], s["train"][0]) and torch.equal(again["test"][1], s["test"][1])
    plain = build_mqar_splits(num_kv_pairs=4, mix_kv_pairs=[], **kw)  # no mix: exactly the old sets
    assert torch.equal(plain["train"][0], mqar(256, 64, 4, 101, seed=3, random_non_queries=False)[0])
    with pytest.raises(ConfigError, match="distinct"):
        build_mqar_splits(num_kv_pairs=4, mix_kv_pairs=[4, 8], **kw)
    with pytest.raises(ConfigError, match=r"4 \* num_kv_pairs <= seq_len"):
        build_mqar_splits(num_kv_pairs=4, mix_kv_pairs=[32], **kw)
    with pytest.raises(ConfigError, match="cannot hold one sequence of each"):
        build_mqar_splits(num_kv_pairs=4, mix_kv_pairs=[8, 16], **{**kw, "test_size": 2})


def test_build_data_mqar():
    cfg = dict(vocab_size=256, seq_len=64, num_kv_pairs=4, train_size=64, test_size=32, seed=0)
    b = build_data("mqar", **cfg)  # power_a and random_non_queries from conf/data/mqar.yaml
    assert b.train[0].shape == (64, 64) and b.eval[0].shape == (32, 64)
    assert b.tokenizer == IntTokenizer(256) and b.vocab_size == 256 and b.metric == "accuracy"
    splits = build_mqar_splits(**cfg, power_a=0.01, random_non_queries=True, mix_kv_pairs=[])
    assert torch.equal(b.eval[0], splits["test"][0])
    assert build_data(name="mqar", **cfg, power_a=1.0, random_non_queries=False).train[0][:, -1].eq(0).any()


def test_build_data_text(tmp_path):
    for i in range(10):
        (tmp_path / f"{i}.txt").write_text("some text " * 30)
    b = build_data("text", seq_len=16, paths=[str(tmp_path)], val_fraction=0.2, seed=1, max_bytes=None)
    assert b.train[0].shape[1] == 16 and len(b.eval[0]) > 0
    assert isinstance(b.tokenizer, ByteTokenizer) and b.vocab_size == 257 and b.metric == "ppl"


def test_build_data_errors():
    assert sorted(DATASETS) == ["copy", "hf", "mqar", "passkey", "state_tracking", "text", "tokens"]
    valid = r"\['copy', 'hf', 'mqar', 'passkey', 'state_tracking', 'text', 'tokens'\]"
    with pytest.raises(ValueError, match=rf"unknown dataset 'wiki'; choose one of {valid}"):
        build_data("wiki", seq_len=8)
    with pytest.raises(ConfigError, match=r"unknown config key 'data.seqlen'; valid keys under 'data': .*seq_len"):
        build_data("text", seqlen=8)
    with pytest.raises(ConfigError, match="vocab_size must be 257, got 256"):
        build_data("text", seq_len=8, vocab_size=256)
    with pytest.raises(ConfigError, match="config key 'data.train_size': .*could not be converted to Integer"):
        build_data("mqar", train_size="many")
    with pytest.raises(ConfigError, match=r"4 \* num_kv_pairs <= seq_len"):  # a setting, not a bug
        build_data("mqar", vocab_size=64, seq_len=32, num_kv_pairs=16)


# ---------------------------------------------------------------------------------------------------- batching


def test_iterate_batches_resume():
    x = torch.arange(10)[:, None].repeat(1, 3)
    y = -x
    fresh = iterate_batches(x, y, batch_size=3, seed=5)
    steps = [next(fresh) for _ in range(12)]  # 3 full batches per epoch, 4 epochs
    assert [s for s, _, _ in steps] == list(range(12))
    for _, xb, yb in steps:
        assert xb.shape == (3, 3) and torch.equal(yb, -xb)
    for e in range(4):  # within an epoch no example repeats
        rows = torch.cat([xb[:, 0] for _, xb, _ in steps[3 * e : 3 * e + 3]])
        assert len(rows.unique()) == 9
    assert not torch.equal(steps[0][1], steps[3][1])  # a new order each epoch
    for k in (0, 1, 3, 7):
        resumed = iterate_batches(x, y, batch_size=3, seed=5, start_step=k)
        for step, xb, yb in steps[k:]:
            rs, rx, ry = next(resumed)
            assert rs == step and torch.equal(rx, xb) and torch.equal(ry, yb)
    other = iterate_batches(x, y, batch_size=3, seed=6)
    assert not all(torch.equal(next(other)[1], xb) for _, xb, _ in steps[:3])
    with pytest.raises(ValueError, match="larger than the dataset"):
        next(iterate_batches(x, y, batch_size=11, seed=0))
