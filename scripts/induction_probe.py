"""Where a trained text model copies from: per attention head, its previous-token score and its induction score on
blocks of text shown twice (Olsson et al. 2022, "In-context Learning and Induction Heads"), and the loss on each copy.

    python scripts/induction_probe.py "runs/tradeoff/transformer-attn[]/checkpoint" \
        "runs/tradeoff/gla-attn[2, 3]/checkpoint"

Each block is `--length` tokens of a standard-library source file (`--text`, tokenized by the checkpoint's own
tokenizer), followed by the same tokens again. For a query at position t of the second copy:
- the previous-token score is the attention weight on position t - 1 (averaged over every position of both copies);
- the induction score is the weight on the token after the query's earlier occurrence, t - length + 1 (averaged over
  the second copy): the head an in-context copy is made with.
A model that copies has a loss on the second copy far below the first and, in a transformer, heads with a high
induction score above heads with a high previous-token score. Prints one markdown table per checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo import from_pretrained
from zoo.model.mixers.attention import Attention


def attention_weights(module: Attention, x: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention weights `[B, H, T, T]` of one attention layer on its input `x` (no cache)."""
    if module.window_size is not None:
        raise ValueError(f"layer {module.layer_idx}: windowed attention is not probed")
    q, k, _, _, _ = module.heads(x, None)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped keys to every query head
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    T = scores.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)
    return scores.masked_fill(causal, float("-inf")).softmax(-1)


@torch.no_grad()
def probe(path: str, text: str, length: int, blocks: int) -> str:
    model = from_pretrained(path).eval()
    ids = torch.tensor(model.tokenizer.encode(text))
    if len(ids) < (blocks + 1) * length:
        raise SystemExit(f"--text has {len(ids)} tokens; need {(blocks + 1) * length} for {blocks} blocks")
    first = torch.stack([ids[(i + 1) * length : (i + 2) * length] for i in range(blocks)])  # past the file header
    tokens = torch.cat([first, first], dim=1)
    weights: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda m, args, out: weights.__setitem__(m.layer_idx, attention_weights(m, args[0])))
        for m in model.modules()
        if isinstance(m, Attention)
    ]
    logits = model(tokens).logits
    for h in hooks:
        h.remove()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    lines = [
        f"### {path}",
        f"loss on the first copy {nll[:, : length - 1].mean():.3f}, on the second {nll[:, length:].mean():.3f} "
        f"({blocks} blocks of {length} tokens)",
        "",
        "| layer | head | previous-token score | induction score |",
        "|---:|---:|---:|---:|",
    ]
    t = torch.arange(length + 1, 2 * length)
    every = torch.arange(1, 2 * length)
    for layer, w in sorted(weights.items()):
        prev = w[:, :, every, every - 1].mean((0, 2))
        induction = w[:, :, t, t - length + 1].mean((0, 2))
        for head in range(w.shape[1]):
            lines.append(f"| {layer} | {head} | {prev[head]:.2f} | {induction[head]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--text", type=Path, default=Path(sysconfig.get_paths()["stdlib"]) / "argparse.py")
    parser.add_argument("--length", type=int, default=100, help="tokens per copy")
    parser.add_argument("--blocks", type=int, default=16)
    args = parser.parse_args()
    text = args.text.read_text()
    for path in args.checkpoints:
        print(probe(path, text, args.length, args.blocks), end="\n\n")


if __name__ == "__main__":
    main()
