"""The recall suite: generator layouts (bytes, and subword tokenizers: a zoo BPE and a SentencePiece-like Hugging
Face tokenizer), scores of a perfect-recall oracle (1.0) and of a constant model (chance), streamed == unstreamed
passkey, over-budget lengths reported, and `zoo-eval` on a checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import zoo
from zoo.data import build_data
from zoo.data.copy import SEP, build_copy_splits, copy_examples
from zoo.data.mqar import IGNORE_INDEX
from zoo.data.passkey import (
    ANSWER_MARGIN,
    FILLER,
    NIAH_DIGITS,
    NIAH_WORDS,
    PASSKEY_QUESTION,
    answer_tokens,
    filler,
    filler_text,
    is_answer,
    niah_examples,
    niah_needle,
    niah_prompt,
    niah_question,
    passkey_examples,
    passkey_needle,
    passkey_prompt,
    whole_sentences,
)
from zoo.data.tokenizer import BPETokenizer, ByteTokenizer, HFTokenizer, IntTokenizer
from zoo.errors import ConfigError
from zoo.evals.recall import Budget, run_suite, stream_prefill
from zoo.model.lm import LMOutput


def text(ids) -> str:
    return bytes(int(i) for i in ids).decode()


# -- generators --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [200, 1000, 4099])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_passkey_prompt_layout(length, depth):
    prompt = text(passkey_prompt(length, depth, "48213"))
    assert len(prompt) == length
    assert prompt.endswith(PASSKEY_QUESTION)
    at = prompt.index(passkey_needle("48213"))
    assert prompt.count("48213") == 2  # only the needle holds the key
    assert at == 0 or prompt[at - 2 : at] == ". "  # at a sentence boundary
    filler_len = length - len(passkey_needle("48213")) - len(PASSKEY_QUESTION)
    assert abs(at - depth * filler_len) <= 60  # within about one sentence of the asked depth
    before = prompt[:at].replace(" ", "")
    assert all(ch.isalpha() or ch == "." for ch in before)


def test_passkey_rejects_impossible_settings():
    with pytest.raises(ValueError, match="shorter than the needle and question"):
        passkey_prompt(50, 0.5, "12345")
    with pytest.raises(ValueError, match="depth must be in"):
        passkey_prompt(500, 1.5, "12345")


def test_passkey_training_split_scores_only_the_digits():
    data = build_data("passkey", seq_len=300, train_size=6, test_size=3, seed=0)
    x, y = data.train
    assert x.shape == y.shape == (6, 300)
    assert ((y != IGNORE_INDEX).sum(1) == 5).all()
    for row_x, row_y in zip(x, y, strict=True):
        key = text(row_y[row_y != IGNORE_INDEX])
        assert key.isdigit() and len(key) == 5
        assert text(row_x[:-4]).endswith(PASSKEY_QUESTION) and passkey_needle(key) in text(row_x)
    again = build_data("passkey", seq_len=300, train_size=6, test_size=3, seed=0)
    assert torch.equal(again.train[0], x) and not torch.equal(data.eval[0], x[:3])  # deterministic, disjoint


def test_niah_prompt_holds_every_needle_and_asks_one():
    prompts, answers = niah_examples(4, 800, num_keys=3, seed=0)
    assert prompts.shape == (4, 800)
    for p, a in zip(prompts, answers, strict=True):
        s = text(p)
        assert s.count("One of the special magic numbers for") == 3
        assert len(a) == NIAH_DIGITS and f"is: {a}." in s
        asked = s.rsplit("What is the special magic number for ", 1)[1].split(" ")[0]
        assert f"magic numbers for {asked} is: {a}." in s


def test_copy_layout():
    x, y = copy_examples(3, 5, vocab_size=20, seed=0)
    assert x.shape == y.shape == (3, 10)
    assert (x[:, 5] == SEP).all() and (x[:, :5] >= 2).all()
    assert torch.equal(y[:, 5:], x[:, :5])  # after SEP, each position predicts the next copied token
    assert (y[:, :5] == IGNORE_INDEX).all()  # reading the content and the separator is not scored
    splits = build_copy_splits(vocab_size=20, seq_len=16, min_len=2, train_size=50, test_size=5, seed=1)
    xs, ys = splits["train"]
    lengths = (xs == SEP).float().argmax(1)
    assert ((ys != IGNORE_INDEX).sum(1) == lengths).all() and lengths.min() >= 2 and lengths.max() <= 8
    with pytest.raises(ValueError, match="seq_len must be even"):
        build_copy_splits(vocab_size=20, seq_len=15, min_len=1, train_size=1, test_size=1, seed=0)


# -- models with known recall ---------------------------------------------------------------------


@dataclass
class TokenCache:
    tokens: torch.Tensor  # (B, seen)
    seen_tokens: int = 0


class LookupLM(torch.nn.Module):
    """A perfect-recall oracle with the model API: it predicts the token that followed the earliest earlier
    occurrence of the longest context suffix (up to `max_match` tokens) that occurred before; with no
    earlier occurrence of even the current token it predicts the sequence's first token (the copy task's
    first answer). Its cache is the whole history, so it counts as a growing cache (like attention)."""

    def __init__(self, vocab_size: int, max_match: int = 24):
        super().__init__()
        self.vocab_size, self.max_match = vocab_size, max_match
        self.max_positions = None  # no position table: any length

    def init_cache(self):
        return None

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        return 8 * seq_len * batch_size

    def predict(self, seq: np.ndarray, t: int) -> int:
        best = int(seq[0])
        alive = np.flatnonzero(seq[:t] == seq[t])  # earlier positions j with seq[j] == seq[t]
        m = 1
        while alive.size:
            best = int(seq[alive[0] + 1])
            if m >= self.max_match or t - m < 0:
                break
            alive = alive[(alive - m >= 0)]
            alive = alive[seq[alive - m] == seq[t - m]]
            m += 1
        return best

    def forward(self, input_ids, cache=None, use_cache=False):
        past = cache.tokens if cache is not None else input_ids[:, :0]
        full = torch.cat([past, input_ids], dim=1)
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b in range(B):
            seq = full[b].numpy()
            for i in range(T):
                logits[b, i, self.predict(seq, past.shape[1] + i)] = 1.0
        new = TokenCache(full, full.shape[1]) if (use_cache or cache is not None) else None
        return LMOutput(logits=logits, cache=new)


class ConstantLM(LookupLM):
    def forward(self, input_ids, cache=None, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., 3] = 1.0
        return LMOutput(logits=logits, cache=TokenCache(input_ids))


SUITE = {
    "mqar": {
        "seq_lens": [64, 128],
        "num_kv_pairs": [4, 16],
        "random_non_queries": True,
        "num_examples": 16,
        "batch_size": 8,
        "seed": 0,
    },
    "copy": {"lengths": [4, 16], "num_examples": 8, "batch_size": 8, "exact_threshold": 0.9, "seed": 0},
    "passkey": {
        "lengths": [300, 700],
        "depths": [0.0, 0.5, 1.0],
        "trials": 1,
        "batch_size": 3,
        "prefill_chunk": 128,
        "memory_budget_gb": 1.0,
        "time_budget_s": 600,
        "seed": 0,
    },
    "niah": {
        "lengths": [600],
        "num_keys": 3,
        "num_examples": 3,
        "batch_size": 3,
        "prefill_chunk": 128,
        "memory_budget_gb": 1.0,
        "time_budget_s": 600,
        "seed": 0,
    },
}


def test_perfect_recall_oracle_scores_one():
    metrics, rows, notes = run_suite(LookupLM(512), IntTokenizer(512), ["mqar", "copy"], SUITE, "cpu")
    assert {k: v for k, v in metrics.items() if k != "copy/max_exact_len"} == dict.fromkeys(
        [k for k in metrics if k != "copy/max_exact_len"], 1.0
    )
    assert metrics["copy/max_exact_len"] == 16
    assert "mqar@64x16: skipped: 4 * num_kv_pairs > seq_len" not in notes  # 64 = 4 * 16 is allowed
    metrics, rows, notes = run_suite(LookupLM(257), ByteTokenizer(), ["passkey", "niah"], SUITE, "cpu")
    assert metrics == {"passkey/accuracy@300": 1.0, "passkey/accuracy@700": 1.0, "niah/accuracy@600": 1.0}
    assert sorted({r["depth"] for r in rows if r["task"] == "passkey"}) == [0.0, 0.5, 1.0]


class RecordingLM(LookupLM):
    """A lookup model that keeps the inputs it was shown."""

    def forward(self, input_ids, cache=None, use_cache=False):
        self.seen.append(input_ids)
        return super().forward(input_ids, cache, use_cache)


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_recall_fills_between_the_queries_as_configured(random_non_queries):
    """eval.recall.mqar.random_non_queries: a model trained on zeros between the queries (Zoology's Fig. 2 data) is
    evaluated on the same layout, not on random fillers it never saw."""
    model = RecordingLM(512)
    model.seen = []
    suite = {"mqar": {**SUITE["mqar"], "random_non_queries": random_non_queries}}
    metrics, _, _ = run_suite(model, IntTokenizer(512), ["mqar"], suite, "cpu")
    assert set(metrics.values()) == {1.0}
    zeros = torch.cat([x.flatten() for x in model.seen]).eq(0).float().mean().item()
    assert (zeros < 0.05) if random_non_queries else (zeros > 0.2), zeros


def test_constant_model_scores_chance():
    metrics, _, _ = run_suite(ConstantLM(512), IntTokenizer(512), ["mqar", "copy"], SUITE, "cpu")
    assert max(v for k, v in metrics.items() if k.startswith("mqar/")) < 0.05
    assert metrics["copy/max_exact_len"] == 0 and metrics["copy/accuracy@16"] < 0.05
    metrics, _, _ = run_suite(ConstantLM(257), ByteTokenizer(), ["passkey"], SUITE, "cpu")
    assert metrics["passkey/accuracy@300"] == 0.0


def test_tasks_that_do_not_fit_the_tokenizer_are_skipped_with_a_reason():
    metrics, _, notes = run_suite(LookupLM(512), IntTokenizer(512), ["passkey"], SUITE, "cpu")
    assert metrics == {} and "passkey: skipped: passkey needs a model trained on text" in notes[0]
    assert "tokenizer is IntTokenizer" in notes[0]
    metrics, _, notes = run_suite(LookupLM(512), None, ["niah"], SUITE, "cpu")
    assert metrics == {} and notes == [
        "niah: skipped: niah needs a model trained on text (byte-level or subword tokens); this checkpoint's "
        "tokenizer is none"
    ]
    with pytest.raises(ValueError, match="unknown recall task"):
        run_suite(LookupLM(512), IntTokenizer(512), ["nope"], SUITE, "cpu")


def test_lengths_over_budget_are_reported_not_dropped():
    cfg = {**SUITE, "passkey": {**SUITE["passkey"], "lengths": [300, 700, 10**6], "memory_budget_gb": 0.001}}
    metrics, rows, notes = run_suite(LookupLM(257), ByteTokenizer(), ["passkey"], cfg, "cpu")
    assert "passkey/accuracy@1000000" not in metrics
    assert any("passkey@1000000: skipped: cache at 1000000 tokens needs" in n for n in notes)
    assert any(r["length"] == 10**6 and r["accuracy"] is None for r in rows)
    budget = Budget(LookupLM(257), 1, memory_budget_gb=100, time_budget_s=10)
    budget.record(1000, 2.0)
    assert "projected 32 s" in budget.refuse(4000)  # growing cache: quadratic time projection


def small_gla():
    cfg = zoo.config.compose(
        [
            "model=gla",
            "model.d_model=32",
            "model.head_dim=16",
            "model.n_layers=2",
            "data.vocab_size=257",
            "model.mixers.gla.chunk_size=16",
        ]
    )
    torch.manual_seed(0)
    return zoo.build_model(cfg.model).eval()


def test_streamed_prefill_equals_one_call():
    model = small_gla()
    prompts, _ = passkey_examples(2, 300, seed=0)
    with torch.no_grad():
        whole = model(prompts, use_cache=True)
    streamed = stream_prefill(model, prompts, chunk=37)
    torch.testing.assert_close(streamed.logits[:, -1], whole.logits[:, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(streamed.cache.layers[0].mixer.state, whole.cache.layers[0].mixer.state)


def test_zoo_eval_writes_metrics_into_the_run_folder(tmp_path):
    from zoo.evals.cli import evaluate_folder

    model = small_gla()
    model.tokenizer = ByteTokenizer()
    run = tmp_path / "run"
    model.save_pretrained(run / "checkpoint")
    cfg = {**SUITE, "device": "cpu", "passkey": {**SUITE["passkey"], "lengths": [300]}}
    metrics, rows, notes = evaluate_folder(run, ["passkey", "mqar"], cfg)
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["passkey/accuracy@300"] == metrics["passkey/accuracy@300"]
    assert any("mqar: skipped" in n for n in results["recall_notes"])
    assert (run / "recall.csv").read_text().startswith("task,length,depth,accuracy")


def test_lengths_past_a_learned_position_table_are_skipped_with_a_reason():
    """A model with learned positions reads at most its table's rows: the recall suite skips longer settings with
    a note (as it skips any that do not fit) and evaluates the rest."""
    model = LookupLM(512)
    model.max_positions = 64
    metrics, _, notes = run_suite(model, IntTokenizer(512), ["mqar", "copy"], SUITE, "cpu")
    assert {k for k in metrics if k.startswith("mqar/")} == {"mqar/accuracy@64x4", "mqar/accuracy@64x16"}
    assert metrics["copy/max_exact_len"] == 16  # 2 * 16 tokens fit
    assert notes == ["mqar@128: skipped: 128 tokens > model.learned_positions=64"]
    model.max_positions = 31
    metrics, _, notes = run_suite(model, IntTokenizer(512), ["copy"], SUITE, "cpu")
    assert notes == ["copy@16 and longer: skipped: 32 tokens > model.learned_positions=31"]
    assert metrics == {"copy/accuracy@4": 1.0, "copy/exact@4": 1.0, "copy/max_exact_len": 4}
    model = LookupLM(257)
    model.max_positions = 305  # passkey@300 reads its prompt and 4 of the 5 answer digits
    metrics, _, notes = run_suite(model, ByteTokenizer(), ["passkey"], SUITE, "cpu")
    assert metrics == {"passkey/accuracy@300": 1.0}
    assert notes == ["passkey@700: skipped: 704 tokens > model.learned_positions=305"]


# -- subword tokenizers: the prompt as text, tokenized whole ------------------------------------------------------


def needle_documents() -> list[str]:
    """Text with every piece of the prompts (filler, needles, questions, digits) to learn a small vocabulary from."""
    niah = [niah_needle(w, "1234567") + niah_question(w) for w in NIAH_WORDS]
    return [FILLER * 3, passkey_needle("12345"), PASSKEY_QUESTION, "0123456789 13579 24680 97531", *niah]


def sentencepiece_like() -> HFTokenizer:
    """A Llama-like Hugging Face tokenizer: "▁" marks the space before a word, digits split one by one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="first"), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(needle_documents(), trainer=trainer)
    return HFTokenizer(tok, eos_token_id=tok.token_to_id("</s>"), bos_token_id=None)


@pytest.fixture(scope="module", params=["bpe", "hf"])
def subword(request):
    if request.param == "bpe":
        return BPETokenizer.train(needle_documents(), 600)
    return sentencepiece_like()


def test_filler_text_is_the_byte_filler():
    for n in range(0, 3 * len(FILLER)):
        assert filler_text(n) == text(filler(n))
        up, down = whole_sentences(n, up=True), whole_sentences(n, up=False)
        assert down <= n <= up and up - down <= len("There and back again. ")
        assert all(m == 0 or filler_text(m).startswith(("The ", "Here ", "There ")) for m in (up, down))


@pytest.mark.parametrize("length", [200, 1000, 4099])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_subword_passkey_prompt_layout(subword, length, depth):
    prompt = passkey_prompt(length, depth, "48213", subword)
    assert prompt.shape == (length,) and prompt.dtype == np.int64  # exactly `length` tokens
    s = subword.decode(prompt.tolist())
    question, needle = PASSKEY_QUESTION.rstrip(" "), passkey_needle("48213")
    assert s.endswith(question) and s.count(needle) == 1 and s.count("48213") == 2
    at = s.index(needle)
    assert at == 0 or s[at - 2 : at] == ". "  # whole, at a sentence boundary
    # the rest is the continuous filler (what is left of the lead-in, then the filler around the needle)
    rest = s[:at] + s[at + len(needle) : -len(question)]
    assert rest == filler_text(len(rest))
    # the needle's depth counts the filler after the lead-in, of which at most one period is left
    assert abs(at - depth * len(rest)) <= len(FILLER) + 12
    if depth == 0.0:
        assert at <= len(FILLER)


def test_subword_prompts_are_deterministic_and_share_the_byte_draws(subword):
    prompts, keys = passkey_examples(4, 500, seed=3, tokenizer=subword)
    again, keys_again = passkey_examples(4, 500, seed=3, tokenizer=subword)
    other, _ = passkey_examples(4, 500, seed=4, tokenizer=subword)
    assert prompts.shape == (4, 500) and torch.equal(prompts, again) and keys == keys_again
    assert not torch.equal(prompts, other)
    assert keys == passkey_examples(4, 500, seed=3)[1]  # the same keys (and depths) as byte prompts
    for p, k in zip(prompts, keys, strict=True):
        assert passkey_needle(k) in subword.decode(p.tolist())


def test_subword_niah_prompt_holds_every_needle_in_order(subword):
    words, numbers = ["apple", "raven", "tulip"], ["1234567", "7654321", "5550123"]
    prompt = niah_prompt(900, words, numbers, [0.9, 0.0, 0.5], asked=2, tokenizer=subword)
    assert prompt.shape == (900,)
    s = subword.decode(prompt.tolist())
    assert s.endswith(niah_question("tulip").rstrip(" "))
    at = [s.index(niah_needle(w, n)) for w, n in zip(words, numbers, strict=True)]
    assert at[1] < at[2] < at[0]  # depths 0.0 < 0.5 < 0.9
    prompts, answers = niah_examples(3, 800, num_keys=3, seed=0, tokenizer=subword)
    assert prompts.shape == (3, 800) and torch.equal(prompts, niah_examples(3, 800, 3, 0, subword)[0])
    assert answers == niah_examples(3, 800, num_keys=3, seed=0)[1]
    for p, a in zip(prompts, answers, strict=True):
        s = subword.decode(p.tolist())
        assert s.count("One of the special magic numbers for") == 3 and f"is: {a}." in s


def test_subword_prompts_too_short_for_the_needles_are_config_errors(subword):
    with pytest.raises(ConfigError, match="passkey prompt length 20 is shorter than the needle and question alone"):
        passkey_prompt(20, 0.5, "12345", subword)
    with pytest.raises(ConfigError, match="niah prompt length 40 is shorter than its 3 needles and question"):
        niah_prompt(40, ["apple", "raven", "tulip"], ["1", "2", "3"], [0.1, 0.5, 0.9], 0, subword)
    with pytest.raises(ConfigError, match="depth must be in"):
        passkey_prompt(500, -0.1, "12345", subword)


def test_answers_of_subword_models_start_after_the_space(subword):
    assert answer_tokens(subword, ["12345"]) == len(subword.encode(" 12345")) + ANSWER_MARGIN
    assert is_answer(subword, " 12345. Remember", "12345") and is_answer(subword, "12345", "12345")
    assert not is_answer(subword, " 123456", "12345") and not is_answer(subword, " 1234", "12345")
    # byte tokens keep the exact match of the five generated bytes
    assert answer_tokens(ByteTokenizer(), ["12345"]) == 5
    assert is_answer(ByteTokenizer(), "12345", "12345") and not is_answer(ByteTokenizer(), "12345.", "12345")


def test_perfect_recall_oracle_scores_one_with_subword_tokens(subword):
    metrics, rows, notes = run_suite(LookupLM(subword.vocab_size), subword, ["passkey", "niah"], SUITE, "cpu")
    assert notes == []
    assert metrics == {"passkey/accuracy@300": 1.0, "passkey/accuracy@700": 1.0, "niah/accuracy@600": 1.0}
    assert sorted({r["depth"] for r in rows if r["task"] == "passkey"}) == [0.0, 0.5, 1.0]
    metrics, _, _ = run_suite(ConstantLM(subword.vocab_size), subword, ["passkey", "niah"], SUITE, "cpu")
    assert set(metrics.values()) == {0.0}


def test_subword_answer_tokens_count_against_learned_positions(subword):
    """A subword answer's tokens are known once the prompts are made; a table that holds the prompt but not the
    answer skips the length with a note naming the tokens it would read."""
    model = LookupLM(subword.vocab_size)
    model.max_positions = 300
    suite = {"passkey": {**SUITE["passkey"], "lengths": [300]}}
    metrics, _, notes = run_suite(model, subword, ["passkey"], suite, "cpu")
    _, keys = passkey_examples(3, 300, seed=0 + 300, depths=[0.0, 0.5, 1.0])  # the suite's keys at 300 tokens
    reads = 300 + answer_tokens(subword, keys) - 1
    assert metrics == {} and notes == [f"passkey@300: skipped: {reads} tokens > model.learned_positions=300"]
    model.max_positions = reads
    metrics, _, notes = run_suite(model, subword, ["passkey"], suite, "cpu")
    assert metrics == {"passkey/accuracy@300": 1.0} and notes == []
