"""The LM head's summed cross-entropy over chunks of tokens, without the whole batch's logits.

    loss_sum = linear_cross_entropy(h, weight, targets, chunk_size=1024)   # == F.cross_entropy(h @ weight.T, ...)

At a large vocabulary the logits are the largest tensors of a training step: `N x vocab` fp32 for the N labelled
tokens of a batch, and as much again for their gradient (4096 tokens at a 150k vocabulary are 2.4 GB each). Here
they exist for `chunk_size` tokens at a time: the forward keeps only each token's log-sum-exp, and the backward
recomputes a chunk's logits to form its softmax, the gradient wrt the hidden states of the chunk and its share of
the head weight's gradient. That costs one more head matmul per chunk than the materialized loss.
"""

from __future__ import annotations

import torch

from zoo.data.mqar import IGNORE_INDEX  # the data's mark of an unscored position


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """`F.cross_entropy(h @ weight.T, targets, ignore_index=-100, reduction="sum")` with the logits formed
    `chunk_size` rows of `h` at a time (fp32 scalar). `h` `[N, d]` are the final (normed) hidden states, `weight`
    `[vocab, d]` the LM head's (a tied embedding's too: autograd adds both gradients into the one parameter),
    `targets` `[N]`. Under autocast the head matmul runs in the autocast dtype, as an `nn.Linear` head's would, and
    the softmax in fp32."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if h.dim() != 2 or targets.shape != h.shape[:1] or weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise ValueError(
            f"expected h [N, d], weight [vocab, d], targets [N]; got {tuple(h.shape)}, {tuple(weight.shape)}, "
            f"{tuple(targets.shape)}"
        )
    return _LinearCrossEntropy.apply(h, weight, targets, chunk_size)


def _matmul_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(h.dtype, weight.dtype)


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (h.to(dtype) @ w.t()).float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk_size):
        dtype = _matmul_dtype(h, weight)  # read before autocast is switched off below
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        lse = torch.empty(len(h), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):  # the casts are explicit
            w = weight.to(dtype)
            for lo in range(0, len(h), chunk_size):
                logits = _chunk_logits(h[lo : lo + chunk_size], w, dtype)
                t = targets[lo : lo + chunk_size]
                chunk_lse = logits.logsumexp(-1)
                lse[lo : lo + chunk_size] = chunk_lse
                picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
                total += torch.where(t != IGNORE_INDEX, chunk_lse - picked, 0.0).sum()
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        h, weight, targets, lse = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[:2]
        dh = torch.empty_like(h) if want_h else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        c, dtype = ctx.chunk_size, ctx.dtype
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)
            for lo in range(0, len(h), c):
                hc, t = h[lo : lo + c].to(dtype), targets[lo : lo + c]
                # d(lse - logit[t]) / d logits = softmax - onehot(t); rows with an ignored label add nothing
                dlogits = (_chunk_logits(hc, w, dtype) - lse[lo : lo + c, None]).exp_()
                dlogits[torch.arange(len(t), device=t.device), t.clamp(min=0)] -= 1.0
                dlogits *= torch.where(t != IGNORE_INDEX, grad, 0.0)[:, None]
                dlogits = dlogits.to(dtype)
                if want_h:
                    dh[lo : lo + c] = dlogits @ w
                if want_w:
                    dw += dlogits.t() @ hc  # summed in fp32 over the chunks
        return dh, None if dw is None else dw.to(weight.dtype), None, None
