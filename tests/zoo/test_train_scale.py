"""Training at scale: gradient accumulation (`train.grad_accum_steps`, also under 2-process gloo DDP and FSDP2),
the chunked LM-head loss (`train.loss_chunk_size`), the AdamW implementations (`train.optimizer_impl`) and their
checkpoints, and the ConfigErrors of bad values. CPU, fp32."""

from __future__ import annotations

import contextlib
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.helpers import TINY_HYBRID_MQAR, assert_close, interrupted_run
from tests.zoo.test_distributed import TINY as DDP_TINY
from tests.zoo.test_distributed import torchrun
from zoo.config import compose, typed
from zoo.data import build_dataset, iterate_batches
from zoo.errors import ConfigError
from zoo.io.results import read_metrics
from zoo.model.lm import build_model
from zoo.model.loss import linear_cross_entropy
from zoo.train.distributed import Dist, check_batch
from zoo.train.loop import make_optimizer, optimizer_impl, run_training, train_step
from zoo.train.state import load_trainer_state, save_trainer_state

TINY = [
    *TINY_HYBRID_MQAR,
    "data.train_size=256",
    "data.test_size=64",
    "train.batch_size=32",
    "train.warmup_steps=5",
    "train.lr=3e-3",
    "train.log_every=1",
    "eval.batch_size=64",
    "train.num_threads=1",
]
EXACT = {"rtol": 0.0, "atol": 1e-6}  # fp32 weights and losses: the same update up to float reduction order
GRADS = {"rtol": 1e-5, "atol": 1e-7}  # gradients of size up to ~0.1
# Adam's first update is lr * g / (|g| + 1e-8) per element, so an element whose gradient is at round-off level
# (~1e-9) moves by a fraction of lr that round-off decides: the weight checks step at a small lr, and the
# gradients themselves are compared before the update.
LR = 1e-5


def no_autocast():
    return torch.autocast("cpu", enabled=False)


def setup(*overrides, tie: bool = False):
    """`(model, optimizer, train config, batches)` of TINY with `overrides`, the model built from seed 0."""
    cfg = compose([*TINY, f"model.tie_embeddings={tie}", *overrides])
    tcfg = typed(cfg.train)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    data = build_dataset(typed(cfg.data))
    return model, make_optimizer(model, tcfg), tcfg, iterate_batches(*data.train, tcfg.batch_size, tcfg.seed)


def step(model, optimizer, tcfg, x, y, lr: float = LR):
    """The trainer's `train_step`; returns `(loss, grad_norm, {name: the gradient the optimizer stepped with})`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    grads = {}

    def keep(*_):
        grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    hook = optimizer.register_step_pre_hook(keep)
    try:
        loss, norm = train_step(model, model, optimizer, x, y, tcfg, Dist(), no_autocast)
    finally:
        hook.remove()
    assert all(p.grad is None for p in model.parameters())  # nothing left for the next step to add to
    return loss, norm, grads


def assert_same_weights(got: torch.nn.Module, want: torch.nn.Module, **tol) -> None:
    want_params = dict(want.named_parameters())
    for name, p in got.named_parameters():
        assert_close(p, want_params[name], name=name, **(tol or EXACT))


def assert_same_step(got, want, got_model, want_model) -> None:
    """`got` and `want` are `step`'s results; then the weights after the step."""
    assert_close(got[0], want[0], name="loss", **EXACT)
    assert_close(got[1], want[1], name="grad_norm", rtol=1e-6, atol=0)
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        assert_close(got[2][name], want[2][name], name=f"grad {name}", **GRADS)
    assert_same_weights(got_model, want_model)


def with_uneven_labels(y: torch.Tensor) -> torch.Tensor:
    """MQAR labels as many positions in every row: drop some, so the micro-batches' label counts differ and a
    per-micro-batch mean would weigh them wrongly."""
    y = y.clone()
    y[:5] = -100
    y[9, y[9] != -100] = -100
    return y


# -- gradient accumulation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_chunk_size", [0, 5])
def test_four_micro_steps_of_8_equal_one_step_of_32(loss_chunk_size):
    chunk = f"train.loss_chunk_size={loss_chunk_size}"
    one, one_opt, one_cfg, batches = setup(chunk)
    accum, accum_opt, accum_cfg, _ = setup(chunk, "train.grad_accum_steps=4")
    _, x, y = next(batches)
    y = with_uneven_labels(y)
    with torch.no_grad():  # the loss a step reports: the whole batch's mean over its labels, before the update
        mean = one(x, labels=y).loss_sum / (y != -100).sum()
    want = step(one, one_opt, one_cfg, x, y)
    assert_close(want[0], mean, name="reported loss", **EXACT)
    assert_same_step(step(accum, accum_opt, accum_cfg, x, y), want, accum, one)


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("ddp", []), ("fsdp", ["train.loss_chunk_size=5", "train.optimizer_impl=for_loop"])],
    ids=["ddp", "fsdp-chunked-loss"],
)
def test_torchrun_accumulation_matches_one_process_at_the_whole_batch(tmp_path, mode, extra):
    """2 gloo ranks x 4 micro-batches of 2 sequences each, gradients synchronised in the last micro-step only,
    give the losses, gradient norms and weights of 1 process taking the 16 sequences at once (`torchrun` runs
    test_distributed's TINY config; a small lr, see LR)."""
    steps = ["train.max_steps=2", "train.eval_every=2", "train.save_every=2", "train.lr=5e-5"]
    run_training(compose([*DDP_TINY, *steps]), tmp_path / "reference")
    run_dir = tmp_path / "accum"
    torchrun(
        tmp_path, *steps, *extra, f"hydra.run.dir={run_dir}", "train.grad_accum_steps=4", f"train.fsdp={mode == 'fsdp'}"
    )
    got, want = read_metrics(run_dir), read_metrics(tmp_path / "reference")
    for key, rel in (("train/loss", 1e-6), ("grad_norm", 1e-5)):
        got_k = {r["step"]: r[key] for r in got if key in r}
        want_k = {r["step"]: r[key] for r in want if key in r}
        assert got_k.keys() == want_k.keys() == {1, 2}
        for s in want_k:
            assert got_k[s] == pytest.approx(want_k[s], rel=rel), (key, s, got_k[s], want_k[s])
    got_w = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    want_w = load_file(str(tmp_path / "reference" / "checkpoint" / "model.safetensors"))
    assert got_w.keys() == want_w.keys()
    for name in want_w:
        assert_close(got_w[name], want_w[name], name=name, **EXACT)


def test_gradients_are_synchronised_in_the_last_micro_step_only():
    """What `train_step` asks of `Dist.gradient_sync` per micro-batch, and what that does under DDP and FSDP2."""
    asked = []

    class Recording(Dist):
        def gradient_sync(self, train_model, sync):
            asked.append(sync)
            return super().gradient_sync(train_model, sync)

    model, opt, tcfg, batches = setup("train.grad_accum_steps=4")
    _, x, y = next(batches)
    train_step(model, model, opt, x, y, tcfg, Recording(), no_autocast)
    assert asked == [False, False, False, True]

    calls = []

    class Wrapped:  # DDP's and FSDP2's switches, recorded
        def no_sync(self):
            calls.append("no_sync")
            return contextlib.nullcontext()

        def set_requires_gradient_sync(self, sync):
            calls.append(f"fsdp sync={sync}")

    for fsdp in (False, True):
        for sync in (False, True):
            with Dist(rank=0, world=2, fsdp=fsdp).gradient_sync(Wrapped(), sync):
                pass
    assert calls == ["no_sync", "fsdp sync=False", "fsdp sync=True"]


# -- the chunked loss ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 8, 37, 100])
def test_chunked_loss_and_gradients_equal_the_materialized_loss(chunk):
    """37 tokens (no chunk size but 1 and 37 divides them), every fifth label ignored."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=g)
    targets[::5] = -100
    want = F.cross_entropy(h @ w.t(), targets, ignore_index=-100, reduction="sum")
    want_h, want_w = torch.autograd.grad(2.5 * want, (h, w))  # an outer factor, as the trainer's 1 / count
    got = linear_cross_entropy(h, w, targets, chunk)
    got_h, got_w = torch.autograd.grad(2.5 * got, (h, w))
    # unit-normal h and W: logits of size ~4 and gradient terms up to ~10, summed over 50 classes (37 tokens)
    assert_close(got, want, name="loss", rtol=1e-6, atol=1e-5)
    assert_close(got_h, want_h, name="dh", rtol=1e-5, atol=1e-5)
    assert_close(got_w, want_w, name="dW", rtol=1e-5, atol=1e-5)

    nothing = torch.full_like(targets, -100)  # no label: a zero loss with zero gradients
    got = linear_cross_entropy(h, w, nothing, chunk)
    assert got.item() == 0.0
    assert all(not grad.any() for grad in torch.autograd.grad(got, (h, w)))


def saved_sizes(fn) -> list[int]:
    """The sizes of the tensors autograd saves for the backward while `fn()` runs."""
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        fn()
    return sizes


def test_chunked_loss_keeps_no_logits_for_backward():
    """What autograd saves for the backward: the hidden states, the weight, the targets and one fp32 number per
    token; nothing of the logits' size (the materialized loss keeps N x vocab)."""
    h = torch.randn(64, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (64,))
    assert max(saved_sizes(lambda: linear_cross_entropy(h, w, targets, 16))) == 300 * 16  # the weight
    assert max(saved_sizes(lambda: F.cross_entropy(h @ w.t(), targets, reduction="sum"))) == 64 * 300


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_model_chunked_loss_matches_the_plain_head(tie):
    """Every parameter's gradient, the head weight (tied: the embedding, which gets both gradients) included."""
    model, _, _, batches = setup(tie=tie)
    _, x, y = next(batches)
    y = with_uneven_labels(y)
    plain = model(x, labels=y)
    assert plain.logits.shape == (int((y != -100).sum()), 64)
    want = torch.autograd.grad(plain.loss_sum, list(model.parameters()))
    chunked = model(x, labels=y, loss_chunk_size=7)  # 7 does not divide the batch's labelled tokens
    assert chunked.logits is None and (y != -100).sum() % 7
    got = torch.autograd.grad(chunked.loss_sum, list(model.parameters()))
    assert_close(chunked.loss_sum, plain.loss_sum, name="loss_sum", rtol=1e-6, atol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), got, want, strict=True):
        assert_close(a, b, name=name, rtol=1e-5, atol=1e-6)
    if tie:
        assert model.lm_head.weight is model.embed.weight


def test_chunked_loss_under_bf16_autocast_rounds_like_the_plain_head():
    """The CUDA trainer's autocast (here on CPU): the head matmul in bf16, the softmax in fp32, as an nn.Linear
    head under autocast; so the gradients below the head are the plain head's, and the head weight's differs by the
    bf16 rounding of the plain head's one full-batch product (the chunked one sums its chunks in fp32)."""
    model, _, _, batches = setup()
    _, x, y = next(batches)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(x, labels=y).loss_sum
        want = torch.autograd.grad(plain, list(model.parameters()))
        chunked = model(x, labels=y, loss_chunk_size=7).loss_sum
        got = torch.autograd.grad(chunked, list(model.parameters()))
    assert chunked.dtype == torch.float32
    assert_close(chunked, plain, name="loss_sum", rtol=1e-5, atol=0)
    for (name, p), a, b in zip(model.named_parameters(), got, want, strict=True):
        assert a.dtype == p.dtype, name
        assert_close(a, b, name=name, **({"rtol": 2**-7, "atol": 1e-2} if name == "lm_head.weight" else GRADS))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_training_step_with_the_chunked_loss_equals_the_plain_one(tie):
    plain, plain_opt, plain_cfg, batches = setup(tie=tie)
    chunked, chunked_opt, chunked_cfg, _ = setup("train.loss_chunk_size=7", tie=tie)
    _, x, y = next(batches)
    want = step(plain, plain_opt, plain_cfg, x, y)
    assert_same_step(step(chunked, chunked_opt, chunked_cfg, x, y), want, chunked, plain)


# -- optimizer implementations ----------------------------------------------------------------------------------

IMPLS = ("for_loop", "foreach", "fused")


def test_optimizer_impls_give_the_same_weights():
    """Three steps of each implementation on the same gradients (the model's, from the for_loop copy: recomputed
    ones would carry the weights' round-off differences into Adam, see LR)."""
    models = {impl: setup(f"train.optimizer_impl={impl}") for impl in IMPLS}
    reference, ref_opt, ref_cfg, batches = models["for_loop"]
    for i in range(3):
        _, x, y = next(batches)
        _, _, grads = step(reference, ref_opt, ref_cfg, x, y, lr=1e-3 * (i + 1))
        for impl in ("foreach", "fused"):
            model, opt = models[impl][:2]
            for name, p in model.named_parameters():
                p.grad = grads[name].clone()
            for group in opt.param_groups:
                group["lr"] = 1e-3 * (i + 1)
            opt.step()
            opt.zero_grad(set_to_none=True)
    for impl in ("foreach", "fused"):
        assert_same_weights(models[impl][0], reference, rtol=1e-6, atol=1e-7)
    for (name, a), b in zip(models["foreach"][0].named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b), name  # on CPU, what `auto` picks updates bit for bit as the loop
    flags = {impl: opt.param_groups[0] for impl, (_, opt, _, _) in models.items()}
    assert flags["for_loop"]["foreach"] is False and flags["foreach"]["foreach"] is True and flags["fused"]["fused"]
    assert optimizer_impl("auto", list(reference.parameters())) == "foreach"  # CPU parameters


@pytest.mark.parametrize(("saved_with", "resumed_with"), list(itertools.permutations(IMPLS, 2)))
def test_optimizer_state_saved_with_one_impl_loads_into_another(tmp_path, saved_with, resumed_with):
    """After loading, the optimizer keeps running its own implementation on the checkpoint's state, and the next
    step equals the saving optimizer's next step."""
    model, opt, tcfg, batches = setup(f"train.optimizer_impl={saved_with}")
    for _ in range(2):
        _, x, y = next(batches)
        step(model, opt, tcfg, x, y)
    save_trainer_state(tmp_path, opt, {"step": 2})
    other = copy.deepcopy(model)
    other_tcfg = typed(compose([*TINY, f"train.optimizer_impl={resumed_with}"]).train)
    other_opt = make_optimizer(other, other_tcfg)
    assert load_trainer_state(tmp_path, other_opt) == {"step": 2}
    running = make_optimizer(other, other_tcfg).param_groups[0]
    for key in ("foreach", "fused"):
        assert other_opt.param_groups[0].get(key) == running.get(key), key
    _, x, y = next(batches)
    want = step(model, opt, tcfg, x, y, lr=1e-3)
    got = step(other, other_opt, other_tcfg, x, y, lr=1e-3)
    assert_same_step(got, want, other, model)


def test_run_checkpointed_with_fused_resumes_with_for_loop(tmp_path):
    overrides = [*TINY, "train.max_steps=4", "train.save_every=2", "train.eval_every=4", "data.train_size=128"]
    run_training(compose([*overrides, "train.optimizer_impl=for_loop"]), tmp_path / "straight")
    interrupted_run(compose([*overrides, "train.optimizer_impl=fused"]), tmp_path / "resumed", 3)
    run_training(compose([*overrides, "train.optimizer_impl=for_loop", "train.resume=true"]), tmp_path / "resumed")
    got, want = read_metrics(tmp_path / "resumed"), read_metrics(tmp_path / "straight")
    got = {r["step"]: r["train/loss"] for r in got if "train/loss" in r}
    want = {r["step"]: r["train/loss"] for r in want if "train/loss" in r}
    assert sorted(got) == [1, 2, 3, 4]
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6), (s, got[s], want[s])


# -- bad values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.grad_accum_steps=0",
            r"train.grad_accum_steps=0 must be >= 1 and divide train.batch_size=32; "
            r"valid: 1, 2, 4, 8, 16, 32$",
        ),
        ("train.grad_accum_steps=3", r"train.grad_accum_steps=3 must be >= 1 and divide .*valid: 1, 2, 4, 8, 16, 32"),
        ("train.loss_chunk_size=-1", r"train.loss_chunk_size=-1; valid: 0 \(off: materialized logits\) or a positive"),
        ("train.optimizer_impl=adam8bit", r"train.optimizer_impl='adam8bit'; valid: auto, foreach, fused, for_loop$"),
    ],
    ids=["accum-zero", "accum-not-dividing", "negative-chunk", "unknown-impl"],
)
def test_bad_values_are_config_errors_naming_the_valid_ones(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_training(compose([*TINY, override]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_micro_batches_must_split_over_the_ranks():
    check_batch(16, Dist(rank=0, world=2), 8)  # micro-batches of 2 rows: one per rank
    with pytest.raises(
        ConfigError, match="micro-batches of 1 rows, which do not split evenly over 2 processes; valid: 1, 2, 4, 8$"
    ):
        check_batch(16, Dist(rank=0, world=2), 16)
