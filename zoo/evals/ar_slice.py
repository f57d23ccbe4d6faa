"""The associative-recall slice of language-model perplexity (Zoology, Arora et al. 2023, section 3): a target
token is an AR hit when it completes an n-gram that already occurred earlier in the same context, so a model can
predict it by looking the n-gram up. Zoology marks bigrams of BPE tokens; byte tokens repeat bigrams everywhere,
so the n of each tokenizer is a setting (`eval.ar_ngram`, conf/eval/default.yaml).

    s = [a, b, c, a, b]   (one sequence: the inputs and then the last label)
    targets s[1:] = [b, c, a, b], bigram (n = 2) hits: [False, False, False, True]   # "a b" was seen before
"""

from __future__ import annotations

import torch


def ar_hits(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """`[B, T]` bool for the targets `tokens[:, 1:]` of `tokens` `[B, T + 1]`: True where the n-gram that ends at
    that target (`tokens[:, j - n + 1 : j + 1]` for target `j`) also ends at an earlier position of the same row.
    Targets with fewer than `n - 1` tokens before them are never hits. Exact: n-grams are compared whole."""
    if n < 1:
        raise ValueError(f"an AR n-gram needs n >= 1, got {n}")
    B, L = tokens.shape
    hits = torch.zeros(B, L - 1, dtype=torch.bool, device=tokens.device)
    if n > L:
        return hits
    grams = tokens.unfold(1, n, 1)  # (B, L - n + 1, n): the n-gram ending at position n - 1 + i
    ids = torch.unique(grams.reshape(-1, n), dim=0, return_inverse=True)[1].view(B, -1)
    key = ids + torch.arange(B, device=tokens.device)[:, None] * (int(ids.max()) + 1)  # an id per (row, n-gram)
    pos = torch.arange(grams.shape[1], device=tokens.device).expand(B, -1)
    first = torch.full((int(key.max()) + 1,), grams.shape[1], dtype=torch.long, device=tokens.device)
    first = first.scatter_reduce(0, key.reshape(-1), pos.reshape(-1), reduce="amin")
    seen_before = pos > first[key]  # (B, L - n + 1)
    # the n-gram ending at position p = n - 1 + i of `tokens` completes target p - 1 (targets start at position 1)
    start = max(n - 1, 1)
    hits[:, start - 1 :] = seen_before[:, start - (n - 1) :]
    return hits
