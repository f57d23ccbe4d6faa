"""AR-hit marking against its brute-force definition."""

from __future__ import annotations

import pytest
import torch

from zoo.evals.ar_slice import ar_hits


def brute_force(row: list[int], n: int) -> list[bool]:
    """Target j (1-based position in `row`) is a hit when row[j-n+1 : j+1] equals row[k-n+1 : k+1] for some k < j."""
    out = []
    for j in range(1, len(row)):
        hit = j >= n - 1 and any(row[j - n + 1 : j + 1] == row[k - n + 1 : k + 1] for k in range(n - 1, j))
        out.append(hit)
    return out


def test_the_docstring_example():
    assert ar_hits(torch.tensor([[1, 2, 3, 1, 2]]), 2).tolist() == [[False, False, False, True]]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("vocab", [2, 3, 50])
def test_ar_hits_equal_the_brute_force_definition(n, vocab):
    gen = torch.Generator().manual_seed(n * 100 + vocab)
    tokens = torch.randint(0, vocab, (4, 41), generator=gen)
    want = [brute_force(row, n) for row in tokens.tolist()]
    assert ar_hits(tokens, n).tolist() == want


def test_rows_do_not_see_each_other_and_short_rows_have_no_hits():
    tokens = torch.tensor([[7, 8, 9, 0], [1, 7, 8, 0]])
    assert not ar_hits(tokens, 2).any()  # "7 8" is in both rows, but never twice in one
    assert ar_hits(torch.tensor([[1, 1]]), 3).tolist() == [[False]]


def test_text_evaluation_splits_the_loss_into_its_ar_slice():
    import contextlib
    import math

    import zoo
    from zoo.config import compose, typed
    from zoo.data import build_data
    from zoo.train.loop import evaluate

    data = build_data("text", seq_len=64, max_bytes=60000, val_fraction=0.2)
    model = zoo.build_model(
        compose(
            [
                "model=gla",
                "model.d_model=16",
                "model.head_dim=8",
                "model.n_layers=1",
                f"model.vocab_size={data.vocab_size}",
            ]
        ).model
    )
    eval_cfg = typed(compose([]).eval)
    metrics = evaluate(model, data, "text", eval_cfg, torch.device("cpu"), contextlib.nullcontext)
    x, y = data.eval
    hits = ar_hits(torch.cat([x, y[:, -1:]], dim=1), eval_cfg.ar_ngram["byte"])
    assert metrics["val/ar_fraction"] == pytest.approx(hits.float().mean().item())
    assert 0 < metrics["val/ar_fraction"] < 1
    f = metrics["val/ar_fraction"]  # the two slices' mean NLLs, weighted by their shares, give the whole loss
    split = f * math.log(metrics["val/ppl_ar"]) + (1 - f) * math.log(metrics["val/ppl_non_ar"])
    assert split == pytest.approx(metrics["val/loss"], rel=1e-5)
