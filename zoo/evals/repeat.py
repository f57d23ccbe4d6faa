"""In-context copying on text (Jelassi et al. 2024, "Repeat After Me"): a validation span shown twice in one
context. On the second copy a model that can look back predicts every token (perplexity near 1); a model that
cannot does about as well as on the first copy. Both copies are scored on the same targets.

    span s = [a, b, c, d]   (the first half of an eval block)
    context  a b c d a b c d   -> first-copy targets b c d, second-copy targets b c d
    (the repeat's first token, a after d, is not scored: nothing announces that the span starts again)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zoo.data.mqar import IGNORE_INDEX  # the data's mark of an unscored position


def repeated_spans(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(x, first, second)` from eval blocks `inputs`, `labels` `[N, T]`: the span `s` of each block's first
    `L = (T + 1) // 2` tokens shown twice, `x = [s, s][:-1]` `[N, 2L - 1]` (no longer than the blocks), and
    the labels of the first copy's and of the second copy's targets `s[1:]` (IGNORE_INDEX elsewhere)."""
    T = inputs.shape[1]
    span_len = (T + 1) // 2
    if span_len < 2:
        raise ValueError(f"a repeated span needs eval blocks of at least 3 tokens, got {T}")
    span = torch.cat([inputs, labels[:, -1:]], dim=1)[:, :span_len]
    doubled = torch.cat([span, span], dim=1)
    x, y = doubled[:, :-1], doubled[:, 1:]
    first, second = torch.full_like(y, IGNORE_INDEX), torch.full_like(y, IGNORE_INDEX)
    first[:, : span_len - 1] = y[:, : span_len - 1]
    second[:, span_len:] = y[:, span_len:]
    return x, first, second


@torch.no_grad()
def repeat_metrics(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device, autocast) -> dict:
    """`val/ppl_repeat` (perplexity on the second copy) and `val/ppl_repeat_first` (on the first copy, the same
    tokens) over the eval blocks `inputs`, `labels`; the model's `forward` takes `logits_mask` (HybridLM)."""
    x_all, first_all, second_all = repeated_spans(inputs, labels)
    nll = {"first": 0.0, "second": 0.0}
    count = 0
    for i in range(0, len(x_all), batch_size):
        x = x_all[i : i + batch_size].to(device)
        first, second = first_all[i : i + batch_size].to(device), second_all[i : i + batch_size].to(device)
        mask = (first != IGNORE_INDEX) | (second != IGNORE_INDEX)
        with autocast():
            logits = model(x, logits_mask=mask).logits
        targets = torch.where(first != IGNORE_INDEX, first, second)[mask]
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
        is_second = (second != IGNORE_INDEX)[mask]
        nll["second"] += token_nll[is_second].sum().item()
        nll["first"] += token_nll[~is_second].sum().item()
        count += int(is_second.sum())
    count = max(count, 1)
    return {
        "val/ppl_repeat": math.exp(min(nll["second"] / count, 50.0)),
        "val/ppl_repeat_first": math.exp(min(nll["first"] / count, 50.0)),
    }
