"""Pre-tokenized corpora: `zoo-data prepare` reproduces data=text's tokens, data=tokens trains on them and resumes
the stream exactly, corrupt or mismatched folders are clear errors, an interrupted prepare leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers import interrupted_run
from zoo.config import compose, typed
from zoo.data import BatchStream, build_data, iterate_batches, lm_documents, prefetch
from zoo.data import tokens as tokens_module
from zoo.data.tokens import open_corpus, prepare_corpus, verify_corpus
from zoo.errors import ConfigError
from zoo.io.results import read_metrics
from zoo.train.loop import run_training

TEXT = ["The quick brown fox jumps over the lazy dog. " * 3, "def f(x):\n    return x + 1\n" * 4, "näive café " * 9]
TINY_MODEL = ["model=hybrid_gla", "model.d_model=32", "model.head_dim=8", "model.n_layers=2", "model.attn.layers=[1]"]
TRAIN = ["train.batch_size=4", "train.warmup_steps=2", "train.log_every=1", "eval.batch_size=8", "eval.max_examples=8"]


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    for i in range(24):  # 24 documents, so that the validation split gets one
        (root / f"doc{i:02d}.txt").write_text(f"document {i}: " + TEXT[i % 3] * (1 + i % 4))
    return root


def text_overrides(files, tokenizer="byte", seq_len=16):
    extra = ["data.bpe_vocab_size=300"] if tokenizer == "bpe" else []
    return ["data=text", f"data.paths=[{files}]", f"data.tokenizer={tokenizer}", f"data.seq_len={seq_len}", *extra]


def prepare(files, out, tokenizer="byte", workers=1, seq_len=16):
    cfg = typed(compose(text_overrides(files, tokenizer, seq_len)).data)
    train_docs, val_docs, tok = lm_documents(cfg)
    return prepare_corpus(train_docs, val_docs, tok, out, workers=workers)


@pytest.mark.parametrize(("tokenizer", "workers"), [("byte", 1), ("bpe", 2)])
def test_prepared_windows_are_data_text_blocks(corpus_files, tmp_path, tokenizer, workers):
    path = prepare(corpus_files, tmp_path / "corpus", tokenizer, workers)
    text = build_data("text", paths=[str(corpus_files)], tokenizer=tokenizer, seq_len=16, bpe_vocab_size=300)
    tokens = build_data("tokens", path=str(path), seq_len=16, vocab_size=text.vocab_size, order="sequential")
    x, y = tokens.train.rows(torch.arange(len(tokens.train)))
    assert torch.equal(x, text.train[0]) and torch.equal(y, text.train[1])
    assert torch.equal(tokens.eval[0], text.eval[0]) and torch.equal(tokens.eval[1], text.eval[1])
    assert torch.equal(tokens.eval_bytes, text.eval_bytes) and tokens.tokenizer == text.tokenizer
    index = verify_corpus(path)
    assert index["dtype"] == "<u2" and index["splits"]["train"]["documents"] + index["splits"]["val"]["documents"] == 24
    offsets = np.load(path / "train.docs.npy")
    stream = open_corpus(path).streams["train"]
    assert offsets[0] == 0 and all(stream[o - 1] == tokens.tokenizer.eos_token_id for o in offsets[1:])


def test_vocab_size_follows_the_corpus_and_errors_name_the_fix(corpus_files, tmp_path):
    path = prepare(corpus_files, tmp_path / "corpus", "bpe")
    cfg = compose(["data=tokens", f"data.path={path}"])
    assert cfg.data.vocab_size == cfg.model.vocab_size == 300
    with pytest.raises(ConfigError, match="not a token corpus .*zoo-data prepare"):
        build_data("tokens", path=str(tmp_path / "nowhere"), vocab_size=300)
    with pytest.raises(ConfigError, match="choose one of"):
        build_data("tokens", path=str(path), vocab_size=300, order="shuffled")
    with pytest.raises(ConfigError, match="corpus at .* has 300 tokens"):
        build_data("tokens", path=str(path), vocab_size=257)
    with pytest.raises(ConfigError, match="fewer than one window"):
        build_data("tokens", path=str(path), vocab_size=300, seq_len=100_000)


def corrupt(path, how):
    if how == "truncated":
        data = (path / "train.bin").read_bytes()
        (path / "train.bin").write_bytes(data[:-2])
    elif how == "tokenizer":  # a tokenizer file other than the one the stream was made with
        (path / "tokenizer.json").write_text(json.dumps(json.loads((path / "tokenizer.json").read_text())))
    elif how == "version":
        index = json.loads((path / "index.json").read_text())
        (path / "index.json").write_text(json.dumps(index | {"version": 99}))
    elif how == "flipped":  # same size, other bytes: only verify's hashes see it
        data = bytearray((path / "val.bin").read_bytes())
        data[5] ^= 1
        (path / "val.bin").write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", r"train.bin: \d+ bytes, but index.json says \d+ tokens .*truncated"),
        ("tokenizer", "not the tokenizer the corpus was tokenized with"),
        ("version", "version 99; this zoo reads version 1"),
        ("flipped", r"val.bin: sha256 differs .*corrupt"),
    ],
)
def test_corrupt_or_mismatched_corpus_is_a_clear_error(corpus_files, tmp_path, how, message):
    path = prepare(corpus_files, tmp_path / "corpus", "bpe")
    corrupt(path, how)
    with pytest.raises(ConfigError, match=message):
        verify_corpus(path)


def test_interrupted_prepare_leaves_nothing(corpus_files, tmp_path, monkeypatch):
    calls = []

    def failing(chunk, tokenizer):
        calls.append(1)
        raise KeyboardInterrupt  # an interrupt in the middle of the train split

    monkeypatch.setattr(tokens_module, "_DOCS_PER_TASK", 4)
    monkeypatch.setattr(tokens_module, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus_files, tmp_path / "corpus")
    assert calls and list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin
    monkeypatch.undo()
    path = prepare(corpus_files, tmp_path / "corpus")
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        prepare(corpus_files, path)


def test_stream_state_continues_on_the_next_row_also_with_another_batch_size():
    x = torch.arange(30).view(10, 3)
    for shuffle in (True, False):
        rows = [r for xb, _, _ in _take(BatchStream((x, x), 2, seed=3, shuffle=shuffle), 12) for r in xb[:, 0].tolist()]
        stream = BatchStream((x, x), 2, seed=3, shuffle=shuffle)
        first = _take(stream, 3)
        again = BatchStream((x, x), 2, seed=3, shuffle=shuffle, state=first[-1][2])
        assert [r for xb, _, _ in first + _take(again, 9) for r in xb[:, 0].tolist()] == rows
        wider = BatchStream((x, x), 3, seed=3, shuffle=shuffle, state=first[-1][2])  # 4 rows of epoch 0 are left
        assert [r for xb, _, _ in _take(wider, 1) for r in xb[:, 0].tolist()] == rows[6:9]
        assert _take(wider, 1)[0][2] == {"epoch": 1, "position": 3}  # the 10th row is skipped, as a remainder
        assert sorted(rows[:10]) == list(range(0, 30, 3))  # one epoch visits every row once
        assert (rows[:10] == list(range(0, 30, 3))) is not shuffle
    legacy = [xb for _, xb, _ in _take(iterate_batches(x, x, 2, seed=3), 5)]
    assert torch.equal(torch.stack(legacy), torch.stack([xb for xb, _, _ in _take(BatchStream((x, x), 2, 3), 5)]))


def test_prefetch_yields_the_same_items_and_raises_where_the_source_failed():
    items = [(torch.tensor([i]), i) for i in range(6)]
    assert [i for _, i in prefetch(iter(items), depth=2)] == list(range(6))

    def failing():
        yield from items[:2]
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for _, i in prefetch(failing(), depth=3):
            got.append(i)
    assert got == [0, 1]
    endless = prefetch(iter(BatchStream((torch.zeros(8, 2), torch.zeros(8, 2)), 2, 0)), depth=1)
    next(endless)
    endless.close()  # stops its thread


def test_training_on_tokens_equals_data_text_and_resumes_the_stream_exactly(corpus_files, tmp_path):
    path = prepare(corpus_files, tmp_path / "corpus", "byte")
    steps = ["train.max_steps=8", "train.eval_every=4", "train.save_every=4"]
    text = compose([*TINY_MODEL, *text_overrides(corpus_files), *TRAIN, *steps])
    tokens = compose([*TINY_MODEL, "data=tokens", f"data.path={path}", "data.seq_len=16", *TRAIN, *steps])
    run_training(text, tmp_path / "text")
    run_training(tokens, tmp_path / "straight")
    assert losses(tmp_path / "straight") == losses(tmp_path / "text")  # the same batches, bit for bit
    interrupted_run(tokens, tmp_path / "resumed", 6)
    on_tokens = [*TINY_MODEL, "data=tokens", "data.seq_len=16", *TRAIN, "train.resume=true"]
    run_training(compose([*on_tokens, f"data.path={path}", *steps]), tmp_path / "resumed")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    meta = json.loads((tmp_path / "resumed" / "checkpoint" / "trainer_state.json").read_text())["meta"]
    assert meta["data"] == BatchStream.at_step((torch.zeros(64), torch.zeros(64)), 4, 0, 8).state() | {
        "fingerprint": open_corpus(path).fingerprint,
    }
    (corpus_files / "extra.txt").write_text(TEXT[0])  # another corpus: one more document
    other = prepare(corpus_files, tmp_path / "other", "byte")
    (corpus_files / "extra.txt").unlink()
    with pytest.raises(ConfigError, match="trained on another corpus"):
        run_training(compose([*on_tokens, f"data.path={other}", "train.max_steps=12"]), tmp_path / "resumed")


def test_zoo_data_cli(corpus_files, tmp_path):
    def zoo_data(*args):
        cmd = [sys.executable, "-m", "zoo.data.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    out = tmp_path / "corpus"
    done = zoo_data("prepare", *text_overrides(corpus_files), "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and zoo_data("verify", str(out)).stdout.startswith(f"{out}: ok")
    bad = zoo_data("prepare", "data=text", "model=gla", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "data overrides only" in bad.stderr
    unknown = zoo_data("prepare", "data=text", "data.tokeniser=bpe", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "tokeniser" in unknown.stderr
    again = zoo_data("prepare", *text_overrides(corpus_files), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_every_option_together_trains_like_the_plain_step(corpus_files, tmp_path):
    """Accumulation, checkpointing, compiled blocks, the chunked loss, foreach AdamW and prefetching at once, on
    pre-tokenized data: the losses of the plain step up to compiled round-off, and a resume continues them."""
    path = prepare(corpus_files, tmp_path / "corpus", "byte")
    run = [*TINY_MODEL, "data=tokens", f"data.path={path}", "data.seq_len=16", *TRAIN, "train.max_steps=6"]
    run += ["train.eval_every=3", "train.save_every=3"]
    plain = ["train.optimizer_impl=for_loop", "train.prefetch=0"]
    every = ["train.grad_accum_steps=2", "train.activation_checkpointing=1", "train.compile=blocks"]
    every += ["train.loss_chunk_size=16", "train.optimizer_impl=foreach", "train.prefetch=2"]
    run_training(compose([*run, *plain]), tmp_path / "plain")
    run_training(compose([*run, *every]), tmp_path / "every")
    expected, got = losses(tmp_path / "plain"), losses(tmp_path / "every")
    assert got.keys() == expected.keys()
    assert all(abs(got[s] - expected[s]) <= 1e-4 * expected[s] for s in expected), (got, expected)
    interrupted_run(compose([*run, *every]), tmp_path / "resumed", 4)
    run_training(compose([*run, *every, "train.resume=true"]), tmp_path / "resumed")
    resumed = losses(tmp_path / "resumed")
    assert all(abs(resumed[s] - got[s]) <= 1e-5 * got[s] for s in got), (resumed, got)
