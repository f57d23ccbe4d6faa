"""Which process this is in a data-parallel job: the one rank check every module uses.

Under torchrun (or a SLURM job started through submitit) every process runs the same code; rank 0 alone writes
the run folder, logs and evaluates. Before the process group exists torchrun's `RANK` variable tells."""

from __future__ import annotations

import os

import torch


def rank() -> int:
    """This process's rank: the process group's once it is initialized, else torchrun's `RANK`, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process is rank 0 (always true outside a data-parallel job)."""
    return rank() == 0
