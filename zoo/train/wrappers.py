"""What the trainer does to the model's training forward, never written into the model (torchtitan's rule):
activation checkpointing per block (`train.activation_checkpointing`) and `torch.compile` of the model or of
its blocks (`train.compile`). `apply_wrappers` runs before DDP / FSDP2 take the model over.

Both change how the forward runs, not what the module holds: a wrapped block gets an instance `forward` that
runs the training forward (module in training mode, autograd on, no cache) its new way and every other call
(evaluation, prefill, decode) as before; the model's `forward` likewise under `compile: model`. No module is
replaced or renamed, so parameter names, `state_dict()` keys and checkpoints are those of the plain model,
and DDP / FSDP2 see the same modules.
"""

from __future__ import annotations

import functools
import logging
import types
from dataclasses import dataclass, field

import torch
from torch._functorch import config as functorch_config
from torch.utils.checkpoint import checkpoint

from zoo.errors import ConfigError

log = logging.getLogger("zoo.train.wrappers")

COMPILE_MODES = ("none", "model", "blocks")
CHECKPOINT_VALUES = "0 (none), 1 (every block) or k > 1 (every k-th block: blocks k-1, 2k-1, ...)"


def check_options(activation_checkpointing, compile_mode) -> None:
    """`train.activation_checkpointing` and `train.compile`, before anything is built."""
    every = activation_checkpointing
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"train.activation_checkpointing={every!r}; valid: {CHECKPOINT_VALUES}")
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile={compile_mode!r}; valid: {', '.join(COMPILE_MODES)}")


def checkpointed_blocks(n_blocks: int, every: int) -> list[int]:
    """The blocks `train.activation_checkpointing=every` checkpoints: none for 0, every `every`-th counting from 1
    (torchtitan's `ac_freq`), so 1 is all of them and 2 the second, fourth, ..."""
    return [] if every == 0 else [i for i in range(n_blocks) if (i + 1) % every == 0]


@dataclass
class Wrapped:
    """What `apply_wrappers` did: the checkpointed blocks, the blocks compiled on their own, whether the model's
    forward is compiled, and the blocks left eager with the reason."""

    checkpointed: list[int] = field(default_factory=list)
    compiled: list[int] = field(default_factory=list)
    model_compiled: bool = False
    eager: dict[int, str] = field(default_factory=dict)


def apply_wrappers(model: torch.nn.Module, activation_checkpointing: int, compile_mode: str) -> Wrapped:
    """Checkpoint and/or compile `model`'s blocks (`model.blocks`) for training, in place; see the module
    docstring. Under `compile: blocks` each block whose mixer is compilable runs its training forward under
    `torch.compile`; under `compile: model` the model's training forward is compiled in one piece, and the blocks
    that are checkpointed or may not be traced are left out of that graph (`torch.compiler.disable`), the
    checkpointed ones compiled on their own. A checkpointed block checkpoints its compiled forward (the compiled
    code reruns in the backward), so a mixer whose kernels dynamo traces only in pieces (GLA's on CPU) is still
    checkpointed and compiled. A block whose mixer says `compilable = False` stays eager, its `compile_note`
    logged."""
    check_options(activation_checkpointing, compile_mode)
    blocks = list(model.blocks)
    done = Wrapped(checkpointed=checkpointed_blocks(len(blocks), activation_checkpointing))
    compiled_step = None
    if compile_mode != "none":
        _allow_recompiles(len(blocks))
        _no_autograd_cache()
        # One compiled function for every block, its cache an entry per block. Static shapes: a training run's
        # never change, and a dynamic-shape graph of a chunked kernel costs more to compile (or fails in inductor)
        compiled_step = torch.compile(_plain_step, dynamic=False)
        for i, block in enumerate(blocks):
            mixer = block.mixer
            if mixer is not None and not mixer.compilable:
                done.eager[i] = f"mixer {mixer.name!r} is not compilable: {mixer.compile_note}"
                log.info("train.compile=%s: block %d stays eager (%s)", compile_mode, i, done.eager[i])
    for i, block in enumerate(blocks):
        ckpt = i in done.checkpointed
        own_compile = compile_mode == "blocks" or (compile_mode == "model" and ckpt)
        step = compiled_step if own_compile and i not in done.eager else _plain_step
        if step is compiled_step:
            done.compiled.append(i)
        if ckpt:
            step = functools.partial(_checkpointed_step, step)
        if compile_mode == "model" and (ckpt or i in done.eager):
            step = torch.compiler.disable(step)  # a piece of its own, not of the model's graph
        if step is not _plain_step:
            block.train_step_fn = step  # a plain attribute: not a module, parameter or buffer
            block.forward = types.MethodType(_block_forward, block)
    if compile_mode == "model":
        model.compiled_forward = torch.compile(type(model).forward)
        model.forward = types.MethodType(_model_forward, model)
        done.model_compiled = True
    if done.checkpointed:
        log.info("activation checkpointing: blocks %s of %d", done.checkpointed, len(blocks))
    if compile_mode != "none":
        what = ["the model"] * done.model_compiled + [f"blocks {done.compiled} on their own"] * bool(done.compiled)
        log.info("torch.compile: %s; blocks %s eager", " and ".join(what), sorted(done.eager) or "none")
    return done


def _allow_recompiles(n_blocks: int) -> None:
    """Every block is compiled on its own (same code, other modules): dynamo's recompile limit (8 per code object
    by default) must not send the later ones back to eager."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 2 * n_blocks + 8))


def _no_autograd_cache() -> None:
    """Turn off AOTAutograd's on-disk cache (inductor's compiled-code cache stays on). In torch 2.13 a graph that
    returns a view of one of its intermediates, once loaded from that cache, rebuilt the view from freed
    metadata: compiled RWKV-7 blocks (their graphs then split by a logging call, which returned such views) crashed
    the first training step with garbage shapes or a segfault, in a fresh cache directory and in the run after
    a good one. Without the cache they did not, and warm starts took as long (RWKV-7 at width 32: 22-25 s
    either way, inductor's cache warm)."""
    functorch_config.enable_autograd_cache = False


def _training(module: torch.nn.Module, cache) -> bool:
    return cache is None and module.training and torch.is_grad_enabled()


def _block_forward(block, x, cache=None, context=None, carry=None):
    """A wrapped block's forward: the training forward through `block.train_step_fn`, every other call as
    `Block.forward`."""
    if not _training(block, cache):
        return type(block).forward(block, x, cache, context, carry)
    return block.train_step_fn(block, x, context, carry)


def _plain_step(block, x, context, carry):
    return type(block).forward(block, x, None, context, carry)


def _checkpointed_step(step, block, x, context, carry):
    """`step` (the block's eager or compiled training forward) under non-reentrant activation checkpointing: its
    activations are recomputed in the backward. The recomputation must see the forward call's carry
    (`Mixer.uses_carry`) as the first run saw it, not after the block wrote into it (RWKV-7's first layer writes
    `v_first`), so the block runs on a copy and what it wrote is handed back as an output of the checkpointed
    function."""
    before = None if carry is None else dict(carry)

    def run(x):
        local = None if before is None else dict(before)
        y, _ = step(block, x, context, local)
        wrote = {} if local is None else {k: v for k, v in local.items() if before.get(k) is not v}
        return y, wrote

    y, wrote = checkpoint(run, x, use_reentrant=False)
    if carry is not None:
        carry.update(wrote)
    return y, None


def _model_forward(model, input_ids, cache=None, use_cache=False, **kwargs):
    """The model's forward under `compile: model`: the training forward compiled, every other call as before."""
    if _training(model, cache) and not use_cache:
        return model.compiled_forward(model, input_ids, **kwargs)
    return type(model).forward(model, input_ids, cache, use_cache, **kwargs)
