"""Data-parallel training under `torchrun`: DDP, or FSDP2 (`train.fsdp=true`), on top of `run_training`.

    torchrun --nproc_per_node 4 -m zoo.train +experiment=quickstart

The process group is set up from torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
`MASTER_PORT`); without it everything here is a no-op and training is the plain single-process loop.
`train.batch_size` stays the *global* batch: every rank draws the same batch from `iterate_batches` and
keeps its own contiguous slice, and the loss is normalised by the global number of labelled tokens, so
N processes compute the gradient of one process at the same batch (up to float reduction order). With
`train.grad_accum_steps` a rank runs its slice in that many micro-batches and the gradients are reduced once, in
the last one's backward (`Dist.gradient_sync`).
Only rank 0 writes the run folder (metrics, results, checkpoints); all ranks agree on that folder.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from zoo.errors import ConfigError
from zoo.rank import is_main
from zoo.schemas import DistributedConfig

BACKENDS = ("auto", "gloo", "nccl")


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) exports WORLD_SIZE to every worker; a plain `python` run does not."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def hydra_overrides_for_rank() -> list[str]:
    """Extra Hydra overrides for this process: ranks other than 0 write nothing into the run folder
    (no `.hydra/`, no job log file), so a second-boundary between the ranks' `${now:...}` leaves no
    half-made folder behind (the ranks then take rank 0's folder, see `Dist.agree_on_run_dir`)."""
    if not launched_by_torchrun() or is_main():
        return []
    return ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


@dataclass
class Dist:
    """Where this process stands: `world == 1` means no process group and plain single-process training."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    # -- setup --------------------------------------------------------------------------------------------

    def agree_on_run_dir(self, run_dir: Path) -> Path:
        """Rank 0's run folder for everyone; a folder this rank's Hydra made and left empty is removed."""
        if not self.enabled:
            return run_dir
        shared = [str(run_dir)]
        dist.broadcast_object_list(shared, src=0)
        agreed = Path(shared[0])
        if agreed.resolve() != run_dir.resolve() and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        return agreed

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run the training forward on: `model` itself (single process or FSDP2, which shards
        `model` in place) or a DDP wrapper around it. Call after loading a checkpoint into `model`."""
        if not self.enabled:
            if self.fsdp:
                raise ConfigError("train.fsdp=true needs several processes: launch with torchrun --nproc_per_node N")
            return model
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            # One FSDP unit per block (its parameters are gathered just for its own forward/backward), then
            # the root for what is left (embeddings, final norm, head).
            for block in getattr(model, "blocks", []):
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    # -- per step -----------------------------------------------------------------------------------------

    def local_slice(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's contiguous share of the global batch."""
        if not self.enabled:
            return x, y
        size = len(x) // self.world
        lo = self.rank * size
        return x[lo : lo + size], y[lo : lo + size]

    def gradient_sync(self, train_model: torch.nn.Module, sync: bool):
        """A context for one micro-batch's forward and backward (`train.grad_accum_steps`): with `sync` false the
        gradients only add up on this rank (DDP's `no_sync`; FSDP2 keeps them unsharded and skips the
        reduce-scatter), and the last micro-batch's backward (`sync` true) reduces their sum once."""
        if not self.enabled:
            return contextlib.nullcontext()
        if self.fsdp:
            train_model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if sync else train_model.no_sync()

    def global_count(self, y: torch.Tensor) -> torch.Tensor:
        """Labelled tokens (label != -100) in the global batch, as a float tensor on `y`'s device."""
        count = (y != -100).sum().float()
        if self.enabled:
            dist.all_reduce(count)
        return count

    def loss_for_backward(self, loss_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """`loss_sum / count`, scaled by the world size because DDP and FSDP *average* gradients over ranks:
        the result is the gradient of the global mean loss, whatever each rank's share of labels."""
        return loss_sum * self.world / count.clamp(min=1)

    def global_loss(self, loss_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The global batch's mean loss (what one process would report), for logging."""
        total = loss_sum.detach().float().clone()
        if self.enabled:
            dist.all_reduce(total)
        return total / count.clamp(min=1)

    @staticmethod
    def plain(t: torch.Tensor) -> torch.Tensor:
        """A replicated DTensor (FSDP2's grad norm) as an ordinary tensor."""
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    # -- checkpoints --------------------------------------------------------------------------------------

    def checkpoint_views(self, model: torch.nn.Module, optimizer):
        """`(model, optimizer)` for `save_checkpoint` on rank 0, None on the other ranks (every rank must call:
        under FSDP2 this gathers the unsharded state, and the views hand it out as plain state dicts)."""
        if not self.fsdp:
            return (model, optimizer) if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # full tensors on rank 0 only
        model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
        if not self.is_main:
            return None
        return _ModelView(model, model_sd), _OptimizerView(by_name_to_by_index(optim_sd, model, optimizer))

    def load_optimizer(self, directory: Path, model: torch.nn.Module, optimizer, load) -> dict:
        """`load(directory, optimizer)` (train_state.load_trainer_state), sharding the state under FSDP2."""
        if not self.fsdp:
            return load(directory, optimizer)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        view = _OptimizerView(None, optimizer.param_groups)  # the running optimizer's implementation flags
        meta = load(directory, view)
        full = by_index_to_by_name(view.loaded, model, optimizer)
        set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))
        return meta

    def gather_model(self, model: torch.nn.Module, build):
        """FSDP2 only (every rank calls): on rank 0, an unsharded copy of `model` built by `build()`, for the
        evaluations and results after training; None on the other ranks and without FSDP2."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        plain = build()
        plain.load_state_dict(state)
        plain.tokenizer = getattr(model, "tokenizer", None)
        return plain.to(self.device)


def by_index_to_by_name(osd: dict, model: torch.nn.Module, optimizer) -> dict:
    """A plain optimizer's state dict (keyed by parameter index) re-keyed by parameter name, the form
    `torch.distributed.checkpoint.state_dict` reads and writes; and `by_name_to_by_index` the other way."""
    names = _index_names(model, optimizer)
    state = {names[i]: s for i, s in osd["state"].items()}
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": state, "param_groups": groups}


def by_name_to_by_index(osd: dict, model: torch.nn.Module, optimizer) -> dict:
    index = {name: i for i, name in enumerate(_index_names(model, optimizer))}
    state = {index[n]: s for n, s in osd["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]
    return {"state": state, "param_groups": groups}


def _index_names(model: torch.nn.Module, optimizer) -> list[str]:
    """Parameter names in the optimizer's index order (its groups' parameters, in turn)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


class _ModelView:
    """What `write_model_files` reads of a model (`state_dict()`, `config`, `tokenizer`), over a gathered
    state dict, so rank 0 writes the usual checkpoint without holding a second, unsharded model."""

    def __init__(self, model: torch.nn.Module, state: dict):
        self.config, self.tokenizer, self._state = model.config, getattr(model, "tokenizer", None), state

    def state_dict(self) -> dict:
        return self._state


class _OptimizerView:
    """What `save_trainer_state` / `load_trainer_state` use of an optimizer, over a plain state dict (and, for
    loading, the optimizer's own `param_groups`)."""

    def __init__(self, state: dict | None, param_groups: list[dict] | None = None):
        self.loaded, self.param_groups = state, param_groups or []

    def state_dict(self) -> dict:
        return self.loaded

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state


def setup(dist_cfg: DistributedConfig, fsdp: bool, device: torch.device) -> Dist:
    """Join torchrun's process group (once per process) and pick this rank's device.

    `dist_cfg` is `train.distributed`: `backend` auto (nccl on CUDA, gloo on CPU) | gloo | nccl."""
    _export_submitit_env()
    backend = dist_cfg.backend
    if backend not in BACKENDS:
        raise ConfigError(f"train.distributed.backend={backend!r}; valid: {', '.join(BACKENDS)}")
    if not launched_by_torchrun():
        return Dist(device=device, fsdp=fsdp)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("train.distributed.backend=nccl needs CUDA devices; use gloo (or auto) on CPU")
    if not dist.is_initialized():
        dist.init_process_group(backend)
        atexit.register(_destroy)  # torch warns at exit about a process group left open
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, fsdp=fsdp)


def _export_submitit_env() -> None:
    """Under Hydra's submitit launcher (`hydra/launcher=slurm`, conf/hydra/launcher/slurm.yaml) with several
    SLURM tasks (`hydra.launcher.tasks_per_node` / `nodes`), every task runs the Hydra job itself, without
    torchrun: submitit turns SLURM's variables into torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT). CUDA_VISIBLE_DEVICES is left alone, since the device is picked by LOCAL_RANK below."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _destroy() -> None:
    """Leave the process group at exit, while the interpreter is still whole, then collect the garbage that still
    holds the group (FSDP2's and DDP's state keep references to it), meant to let gloo's worker threads stop here
    rather than during interpreter finalization. Rarely, a rank of a finished 2-rank FSDP2 run aborted at exit
    ("terminate called without an active exception"; 1 exit in a few hundred here, also with a bare FSDP2 script);
    the collection is not shown to remove that (too rare to count in a sitting). The group is not destroyed at the
    end of each job because a Hydra sweep's next job reuses it."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def check_batch(batch_size: int, ctx: Dist, grad_accum_steps: int = 1) -> None:
    """`train.batch_size` is the global batch of one optimizer step: it splits into `grad_accum_steps` micro-batches
    of `batch_size / grad_accum_steps` rows, and each of these evenly over the processes."""
    if batch_size % ctx.world:
        raise ConfigError(f"train.batch_size={batch_size} does not split evenly over {ctx.world} processes")
    valid = [n for n in range(1, batch_size + 1) if batch_size % (n * ctx.world) == 0]
    if grad_accum_steps < 1 or batch_size % grad_accum_steps:
        raise ConfigError(
            f"train.grad_accum_steps={grad_accum_steps} must be >= 1 and divide train.batch_size={batch_size}; "
            f"valid: {', '.join(map(str, valid))}"
        )
    if (batch_size // grad_accum_steps) % ctx.world:
        raise ConfigError(
            f"train.grad_accum_steps={grad_accum_steps} leaves micro-batches of {batch_size // grad_accum_steps} rows, "
            f"which do not split evenly over {ctx.world} processes; valid: {', '.join(map(str, valid))}"
        )
