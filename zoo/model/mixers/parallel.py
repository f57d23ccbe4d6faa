"""Several token mixers side by side on the same input, their outputs summed: the parallel ("hybrid-head") layer of
Falcon-H1 (TII 2025, arXiv:2507.22448: attention and Mamba-2 in every layer, then an MLP) and, but for its per-branch
norms and learned scales, of Hymba (Dong et al. 2024, arXiv:2411.13676). For the block's normed input x `[B, T, d]`:

    y = branch_1(x) + branch_2(x) + ...          y: [B, T, d]

`branches` (conf/mixer/parallel.yaml) names the branches by registry key, e.g. `[swa, mamba2]`; each is built with
its own options like a layer's mixer (`model.mixers.<name>`, `model.attn` for `attn`), and the model hands the built
branches in (`Mixer.composes`, `zoo.model.lm.build_mixer`), so the block stays `x + mixer(norm(x))`. Fixed scales
on a branch's input or output (Falcon-H1's multipliers) are folded into its projections on import.

The cache (`ParallelCache`) holds the branches' caches in branch order; the size and growth of the state are the
branches' together, and a `reserve` for a KV cache reaches the branch that keeps one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.model.mixers import register
from zoo.model.mixers.base import Mixer


@dataclass
class ParallelCache:
    """The branches' caches, in branch order: a list in a dataclass, so `stack_caches` batches it branch by branch."""

    branches: list = field(default_factory=list)

    @property
    def reserve(self) -> int:
        """Tokens a branch's KV cache makes room for (`HybridLM.prefill(max_length=...)`); setting it sets it on every
        branch cache that takes one (the branches whose mixer `preallocates`)."""
        return max((c.reserve for c in self.branches if hasattr(c, "reserve")), default=0)

    @reserve.setter
    def reserve(self, tokens: int) -> None:
        for cache in self.branches:
            if hasattr(cache, "reserve"):
                cache.reserve = tokens


@register("parallel")
class Parallel(Mixer):
    composes = "branches"

    def __init__(self, d_model: int, layer_idx: int, *, n_layers: int, head_dim: int, branches: list[Mixer]):
        super().__init__(layer_idx)
        self.branches = nn.ModuleDict({branch.name: branch for branch in branches})  # blocks.i.mixer.branches.<name>.

    @property
    def uses_carry(self) -> bool:
        return any(branch.uses_carry for branch in self.branches.values())

    def forward(self, x: torch.Tensor, cache: ParallelCache | None = None, carry: dict | None = None):
        outs, caches = [], []
        for i, branch in enumerate(self.branches.values()):
            extra = {"carry": carry} if branch.uses_carry else {}
            y, branch_cache = branch(x, None if cache is None else cache.branches[i], **extra)
            outs.append(y)
            caches.append(branch_cache)
        return sum(outs[1:], outs[0]), None if cache is None else ParallelCache(caches)

    def init_cache(self) -> ParallelCache:
        return ParallelCache([branch.init_cache() for branch in self.branches.values()])

    def cache_tensors(self, seq_len: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [t for branch in self.branches.values() for t in branch.cache_tensors(seq_len)]

    @property
    def state_grows(self) -> bool:
        return any(branch.state_grows for branch in self.branches.values())

    @property
    def preallocates(self) -> bool:
        return any(branch.preallocates for branch in self.branches.values())

    def kernel_backends(self) -> dict[str, str]:
        return {k: v for branch in self.branches.values() for k, v in branch.kernel_backends().items()}

    def flops_per_token(self, seq_len: int) -> float:
        return sum(branch.flops_per_token(seq_len) for branch in self.branches.values())

    @property
    def compilable(self) -> bool:
        return all(branch.compilable for branch in self.branches.values())

    @property
    def compile_note(self) -> str:
        return "; ".join(f"{b.name}: {b.compile_note}" for b in self.branches.values() if not b.compilable)
