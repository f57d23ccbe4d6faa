"""In-context copying on text: the repeated-span layout, and val/ppl_repeat of a model that copies (near 1) and of
one that cannot look back (the first copy's perplexity)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.zoo.test_recall import LookupLM
from zoo.evals.repeat import repeat_metrics, repeated_spans
from zoo.model.lm import LMOutput

I = -100  # noqa: E741  (the ignored label, short so that the expected rows line up)


def test_the_layout_of_a_repeated_span():
    inputs, labels = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[2, 3, 4, 5, 6]])
    x, first, second = repeated_spans(inputs, labels)  # span [1, 2, 3] shown twice
    assert x.tolist() == [[1, 2, 3, 1, 2]]
    assert first.tolist() == [[2, 3, I, I, I]]
    assert second.tolist() == [[I, I, I, 2, 3]]  # the repeat's first token (1 after 3) is not scored
    x, first, second = repeated_spans(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, 5]]))
    assert (x.tolist(), first.tolist(), second.tolist()) == ([[1, 2, 1]], [[2, I, I]], [[I, I, 2]])  # even T: span 2
    with pytest.raises(ValueError, match="at least 3 tokens"):
        repeated_spans(torch.tensor([[1, 2]]), torch.tensor([[2, 3]]))


class Scored(torch.nn.Module):
    """A model's logits scaled up (confident) and selected with `logits_mask`, as HybridLM's forward does."""

    def __init__(self, model, scale: float = 40.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, input_ids, logits_mask=None):
        logits = self.model(input_ids).logits * self.scale
        return LMOutput(logits=logits if logits_mask is None else logits[logits_mask])


class Unigram(torch.nn.Module):
    """Cannot look back: the same distribution at every position."""

    def forward(self, input_ids, logits_mask=None):
        logits = torch.linspace(0, 1, 50).expand(*input_ids.shape, 50)
        return LMOutput(logits=logits[logits_mask])


def blocks(n: int = 6, T: int = 40, vocab: int = 50):
    """Eval blocks whose first halves have no repeated token, so the copy is unambiguous."""
    gen = torch.Generator().manual_seed(0)
    stream = torch.stack([torch.randperm(vocab, generator=gen)[: T + 1] for _ in range(n)])
    return stream[:, :-1], stream[:, 1:]


def test_a_model_that_copies_has_repeat_perplexity_near_one():
    inputs, labels = blocks()
    metrics = repeat_metrics(Scored(LookupLM(50)), inputs, labels, 4, "cpu", contextlib.nullcontext)
    assert metrics["val/ppl_repeat"] < 1.01
    assert metrics["val/ppl_repeat_first"] > 1000  # nothing to copy from on the first pass: confidently wrong


def test_a_model_that_cannot_look_back_scores_both_copies_alike():
    inputs, labels = blocks()
    metrics = repeat_metrics(Unigram(), inputs, labels, 4, "cpu", contextlib.nullcontext)
    assert metrics["val/ppl_repeat"] == pytest.approx(metrics["val/ppl_repeat_first"], rel=1e-6)
    assert 40 < metrics["val/ppl_repeat"] < 60  # about the vocabulary of 50


def test_text_evaluation_reports_the_repeat_metrics():
    import zoo
    from zoo.config import compose, typed
    from zoo.data import build_data
    from zoo.train.loop import evaluate

    data = build_data("text", seq_len=64, max_bytes=60000, val_fraction=0.2)
    sizes = ["model=gla", "model.d_model=16", "model.head_dim=8", "model.n_layers=1"]
    model = zoo.build_model(compose([*sizes, f"model.vocab_size={data.vocab_size}"]).model)
    eval_cfg = typed(compose([]).eval)
    metrics = evaluate(model, data, "text", eval_cfg, torch.device("cpu"), contextlib.nullcontext)
    assert metrics["val/ppl_repeat"] > 1 and metrics["val/ppl_repeat_first"] > 1
    assert model.training  # evaluate leaves the model in training mode
    off = typed(compose(["eval.repeat=false"]).eval)
    assert "val/ppl_repeat" not in evaluate(model, data, "text", off, torch.device("cpu"), contextlib.nullcontext)
