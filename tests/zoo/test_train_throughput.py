"""Training throughput: activation checkpointing (`train.activation_checkpointing`) and `torch.compile`
(`train.compile`) give the plain model's gradients and checkpoints, the FLOP counts behind MFU match hand counts,
and `train/tokens_per_s`, `train/mfu` and `train/peak_mem_bytes` reach metrics.jsonl. CPU, fp32."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import kernels.backend
import zoo
from tests.helpers import TINY_HYBRID_MQAR, assert_close
from tests.zoo.test_distributed import TINY as DDP_TINY
from tests.zoo.test_distributed import torchrun
from zoo.config import compose, options
from zoo.errors import ConfigError
from zoo.io.results import read_metrics
from zoo.model.flops import chunk_mixing_flops, mean_causal_keys, mean_chunk_keys
from zoo.model.layers import swiglu_hidden
from zoo.model.lm import build_model
from zoo.model.mixers.gla import GatedLinearAttention
from zoo.train.loop import run_training
from zoo.train.throughput import gpu_peak_flops, measured_cpu_peak
from zoo.train.wrappers import apply_wrappers, checkpointed_blocks

SMALL = ["model.d_model=32", "model.head_dim=8", "data.vocab_size=64", "model.n_layers=4"]
TINY_RUN = [
    *TINY_HYBRID_MQAR,
    "data.train_size=64",
    "data.test_size=16",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.max_steps=3",
    "train.log_every=1",
    "train.eval_every=3",
    "train.save_every=3",
    "train.num_threads=1",
    "eval.batch_size=16",
]
SLOW = pytest.mark.slow  # torch.compile in 2 processes: a minute or more on a loaded 2-core machine
GRADS = {"rtol": 1e-5, "atol": 1e-6}  # compiled kernels sum in another order (gradients of size ~1)
VOCAB = 64


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own graphs (the shapes of an earlier test's would make dynamo's shapes dynamic)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def small_model(arch: str, *extra: str):
    torch.manual_seed(0)
    return build_model(compose([f"model={arch}", *SMALL, *extra]).model)


def batch(seq_len: int = 24):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (2, seq_len), generator=g)
    y = torch.randint(0, VOCAB, (2, seq_len), generator=g)
    y[:, :5] = -100  # a few unlabelled positions, as MQAR has many
    return x, y


def loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = model(x, labels=y).loss_sum
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def saved_numel(model, x, y) -> int:
    """Elements autograd keeps for the backward of the training forward."""
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        model(x, labels=y)
    return sum(sizes)


def assert_same_training(wrapped, plain, x, y, **tol):
    """The same loss and gradients, the same parameter names; evaluation untouched (exactly the plain logits)."""
    want_loss, want = loss_and_grads(plain, x, y)
    got_loss, got = loss_and_grads(wrapped, x, y)
    assert_close(got_loss, want_loss, name="loss_sum", **(tol or {"rtol": 0, "atol": 0}))
    assert got.keys() == want.keys()
    for name in want:
        assert_close(got[name], want[name], name=f"grad {name}", **(tol or {"rtol": 0, "atol": 0}))
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x).logits, plain(x).logits)


# -- activation checkpointing ------------------------------------------------------------------------------------


def test_checkpointed_blocks_are_every_kth_counting_from_one():
    assert checkpointed_blocks(4, 0) == []
    assert checkpointed_blocks(4, 1) == [0, 1, 2, 3]
    assert checkpointed_blocks(4, 2) == [1, 3]
    assert checkpointed_blocks(4, 3) == [2]
    assert checkpointed_blocks(4, 5) == []


@pytest.mark.parametrize("every", [0, 2, 1], ids=["none", "every-2nd", "all"])
@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("hybrid_gla", ("model.attn.layers=[1,3]",)),
        ("rwkv7", ("model.attn.layers=[]",)),  # the first layer writes the carry's v_first, the others read it
        ("mamba2", ("model.shared.layers=[0,1]", "model.shared.mlp_hidden=48", "model.shared.adapter_rank=4")),
    ],
    ids=["gla+attn", "rwkv7-carry", "mamba2+shared-block"],
)
def test_activation_checkpointing_gives_the_plain_gradients(every, arch, extra):
    """Recomputing a block repeats its forward exactly, so the gradients are equal bit for bit; what autograd keeps
    shrinks with every checkpointed block."""
    plain = small_model(arch, *extra)
    wrapped = copy.deepcopy(plain)
    done = apply_wrappers(wrapped, every, "none")
    assert done.checkpointed == checkpointed_blocks(4, every)
    x, y = batch()
    kept, plain_kept = saved_numel(wrapped, x, y), saved_numel(plain, x, y)
    assert kept < plain_kept if every else kept == plain_kept
    if every == 1:
        assert kept < saved_numel(apply_and_return(copy.deepcopy(plain), 2), x, y)
    assert_same_training(wrapped, plain, x, y)


def apply_and_return(model, every: int):
    apply_wrappers(model, every, "none")
    return model


@pytest.mark.parametrize(
    "options",
    [
        ("train.fsdp=true", "train.activation_checkpointing=1"),
        pytest.param(("train.fsdp=false", "train.activation_checkpointing=2", "train.compile=blocks"), marks=SLOW),
        pytest.param(("train.fsdp=true", "train.compile=blocks"), marks=SLOW),
    ],
    ids=["fsdp-checkpointing", "ddp-checkpointing+compile", "fsdp-compile"],
)
def test_torchrun_with_wrapped_blocks_matches_one_plain_process(tmp_path, options):
    """2 gloo ranks (under FSDP2 the recomputation of a checkpointed block runs inside its FSDP unit): the losses,
    gradient norms and saved weights (under the plain names) of 1 plain process at the same batch."""
    steps = ["train.max_steps=2", "train.eval_every=2", "train.save_every=2", "train.lr=5e-5"]
    run_training(compose([*DDP_TINY, *steps]), tmp_path / "reference")
    run_dir = tmp_path / "torchrun"
    torchrun(tmp_path, *steps, f"hydra.run.dir={run_dir}", *options)
    for key in ("train/loss", "grad_norm"):
        got = {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}
        want = {r["step"]: r[key] for r in read_metrics(tmp_path / "reference") if key in r}
        assert got.keys() == want.keys() == {1, 2}
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-5), (key, step, got[step], want[step])
    got_w = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    want_w = load_file(str(tmp_path / "reference" / "checkpoint" / "model.safetensors"))
    assert got_w.keys() == want_w.keys()
    for name in want_w:
        assert_close(got_w[name], want_w[name], name=name, rtol=0, atol=1e-6)


# -- torch.compile -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "mode", "every"),
    [("transformer", "model", 0), ("transformer", "blocks", 2), ("gla", "blocks", 1)],
    ids=["transformer-model", "transformer-blocks+checkpoint-2nd", "gla-blocks+checkpoint-all"],
)
def test_compiled_training_forward_gives_the_plain_gradients(arch, mode, every):
    """GLA's torch kernel graph-breaks (`Tensor.item`) and still compiles, in pieces, also checkpointed: a
    checkpointed block checkpoints its compiled forward, and autograd keeps what eager checkpointing keeps."""
    plain = small_model(arch, "model.n_layers=2", "model.attn.layers=[]")
    wrapped = copy.deepcopy(plain)
    done = apply_wrappers(wrapped, every, mode)
    assert (done.model_compiled, done.compiled, done.eager) == (mode == "model", [0, 1] if mode == "blocks" else [], {})
    assert done.checkpointed == checkpointed_blocks(2, every)
    x, y = batch()
    before = compiled_graphs()
    if every == 1:  # every block checkpointed: autograd keeps each block's input and nothing inside
        eager_checkpointed = apply_and_return(copy.deepcopy(plain), every)
        assert saved_numel(wrapped, x, y) == saved_numel(eager_checkpointed, x, y) < saved_numel(plain, x, y)
    assert_same_training(wrapped, plain, x, y, **GRADS)
    assert compiled_graphs() > before  # compiled, not fallen back to eager


def test_blocks_of_a_mixer_that_is_not_compilable_stay_eager_with_the_reason_logged(monkeypatch, caplog):
    monkeypatch.setattr(GatedLinearAttention, "compilable", False)
    monkeypatch.setattr(GatedLinearAttention, "compile_note", "a test says so")
    plain = small_model("hybrid_gla", "model.n_layers=2", "model.attn.layers=[1]")
    wrapped = copy.deepcopy(plain)
    with caplog.at_level(logging.INFO, logger="zoo.train.wrappers"):
        done = apply_wrappers(wrapped, 0, "blocks")
    assert done.compiled == [1] and list(done.eager) == [0]
    assert "block 0 stays eager (mixer 'gla' is not compilable: a test says so)" in caplog.text
    assert "train_step_fn" not in vars(wrapped.blocks[0])  # left as it was
    assert_same_training(wrapped, plain, *batch(), **GRADS)


# by mixer: GLA's torch kernel breaks the graph at its data-dependent choice of intra-chunk form (`Tensor.item`)
BREAKS_BY_DESIGN = {"gla": "Tensor.item()"}


@pytest.mark.parametrize("arch", options("model"))
def test_a_block_traces_in_one_graph_at_its_first_training_call(monkeypatch, arch):
    """The first training step is the one `train.compile` traces, and the first call of each kernel family logs
    its resolved backend: a logger call there split the graph (an RWKV-7 block in 8 pieces), and torch 2.13's
    compile cache then crashed the next run. Nothing resolved yet, as in a fresh process."""
    monkeypatch.setattr(kernels.backend, "_LOGGED", set())
    block = small_model(arch, "model.n_layers=8").train().blocks[0]
    explained = torch._dynamo.explain(block)(torch.randn(2, 24, 32), None, None, {})
    reasons = {b.reason.splitlines()[0] for b in explained.break_reasons}
    expected = BREAKS_BY_DESIGN.get(block.mixer.name)
    if expected:
        assert reasons and all(expected in r for r in reasons), reasons
    else:
        assert explained.graph_break_count == 0, reasons


@SLOW
def test_a_compiled_rwkv7_run_starts_from_a_warm_compile_cache(tmp_path):
    """Two runs on one compile cache, the second finding the first's graphs. Before the fixes (no graph breaks
    from backend logging, AOTAutograd's cache off) torch 2.13 rebuilt views returned by cached graphs from freed
    metadata: the first run here segfaulted, and elsewhere the rerun of a run that had passed crashed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    for run in ("first", "second"):
        args = [
            "+experiment=zoology_mqar",
            "model=rwkv7",
            "model.d_model=32",
            "data.train_size=64",
            "data.test_size=16",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.eval_every=2",
            "train.save_every=2",
            "train.num_threads=1",
            f"hydra.run.dir={tmp_path / run}",
        ]
        proc = subprocess.run(
            [sys.executable, "-m", "zoo.train", *args], capture_output=True, text=True, env=env, timeout=900
        )
        assert proc.returncode == 0, f"{run} run: {proc.stderr[-2000:]}"
        assert read_metrics(tmp_path / run)[-1]["step"] == 2


def test_run_with_checkpointing_and_compile_writes_the_plain_model_checkpoint(tmp_path):
    """The run folder's weights have the plain model's tensor names and load into a plain model."""
    cfg = compose([*TINY_RUN, "train.activation_checkpointing=1", "train.compile=blocks"])
    run_training(cfg, tmp_path)
    assert compiled_graphs() > 0
    stored = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    plain = build_model(cfg.model)
    assert set(stored) == set(plain.state_dict()) - {"lm_head.weight"}  # tied: stored once, as the embedding
    loaded = zoo.from_pretrained(tmp_path / "checkpoint")
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in plain.named_parameters()]


# -- FLOPs per token -------------------------------------------------------------------------------------------


def test_transformer_flops_are_6n_plus_the_causal_attention_term():
    """PaLM's `6 N + 12 L d T` per trained token with the attention term halved for the causal mask, each query
    seeing (T + 1) / 2 keys on average: `6 N + 6 L d (T + 1)`. N counts the matrices that multiply activations,
    the LM head's `d x vocab` included (tied to the embedding here) and the embedding lookup not; norms neither."""
    d, L, T, V = 32, 4, 24, VOCAB
    model = small_model("transformer", "model.attn.layers=[]")
    hidden = swiglu_hidden(d, 4.0)
    N = L * (4 * d * d + 3 * d * hidden) + d * V  # q, k, v, o; SwiGLU's gate, up, down; the head
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matrices == N
    assert 3 * model.flops_per_token(T) == 6 * N + 6 * L * d * (T + 1)
    # a sliding window of 5: a query sees min(t, 5) keys
    windowed = small_model("transformer", "model.attn.layers=[]", "model.attn.window_size=5")
    keys = (1 + 2 + 3 + 4 + 5 * (T - 4)) / T
    assert mean_causal_keys(T, 5) == pytest.approx(keys)
    assert 3 * windowed.flops_per_token(T) == pytest.approx(6 * N + 3 * L * 4 * d * keys)


def test_gla_flops_by_hand():
    """One GLA layer (d 32, key dim 16 and value dim 32 in 4 heads: K = 4, V = 8; gate rank 16; chunks of 8) at
    T = 20, chunks of 8, 8 and 4 tokens: the projections, then per head the state's read and write (4 K V) and the
    intra-chunk scores and values (2 (K + V) per key seen inside the chunk)."""
    d, K, V, H, rank, T = 32, 4, 8, 4, 16, 20
    model = small_model("gla", "model.attn.layers=[]", "model.mixers.gla.chunk_size=8")
    mixer = model.blocks[0].mixer
    assert (mixer.num_heads, mixer.head_k, mixer.head_v) == (H, K, V)
    projections = d * 16 + d * 16 + d * 32 + d * 32 + (d * rank + rank * 16) + 32 * d  # q k v g, gate, o
    seen = (8 * 9 / 2 + 8 * 9 / 2 + 4 * 5 / 2) / T  # mean keys a token sees inside its chunk
    assert mean_chunk_keys(T, 8) == seen
    assert chunk_mixing_flops("linear", T, 8, K, V) == 4 * K * V + 2 * seen * (K + V)
    assert mixer.flops_per_token(T) == pytest.approx(2 * projections + H * (4 * K * V + 2 * seen * (K + V)))


def test_every_architecture_counts_its_mixing_flops():
    """Every mixer costs more than its projections (the token mixing), and a model the sum of its parts."""
    for arch in ("based", "deltanet", "fox", "gated_deltaproduct", "kda", "mamba2", "parallel", "retnet", "rwkv6"):
        model = small_model(arch, "model.attn.layers=[]", "model.n_layers=2")
        for block in model.blocks:
            linears = sum(m.weight.numel() for m in block.mixer.modules() if isinstance(m, torch.nn.Linear))
            assert block.mixer.flops_per_token(64) > 2 * linears, arch
        parts = sum(block.flops_per_token(64) for block in model.blocks) + model.head_flops_per_token()
        assert model.flops_per_token(64) == pytest.approx(parts)


# -- metrics -------------------------------------------------------------------------------------------------


def test_throughput_metrics_reach_metrics_jsonl(tmp_path):
    run_training(compose(TINY_RUN), tmp_path)
    logged = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3]
    model = build_model(compose(TINY_RUN).model)
    body = 3 * (model.flops_per_token(32) - model.head_flops_per_token())
    for record in logged:
        assert record["train/tokens_per_s"] > 0
        assert 0 < record["train/mfu"] < 1  # of the measured matmul peak, on CPU
        assert record["train/peak_mem_bytes"] > 2**20  # the process's RSS high-water mark
        # the head runs at the labelled positions only: MFU sits between the blocks' share and all of it
        low = body * record["train/tokens_per_s"] / measured_cpu_peak(1)
        assert low <= record["train/mfu"] <= low * (1 + model.head_flops_per_token() * 3 / body)


def test_given_peak_flops_set_mfu(tmp_path):
    run_training(compose([*TINY_RUN, "train.max_steps=1", "train.peak_flops=1e6"]), tmp_path)
    (record,) = [r for r in read_metrics(tmp_path) if "train/loss" in r]
    model = build_model(compose(TINY_RUN).model)
    most = 3 * model.flops_per_token(32) * record["train/tokens_per_s"] / 1e6
    assert most / 2 < record["train/mfu"] <= most  # above 1: the peak given is far below this CPU's


def test_gpu_peaks_by_device_name():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA H200") == 989.4e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == gpu_peak_flops("NVIDIA A100 80GB PCIe") == 312e12
    assert gpu_peak_flops("NVIDIA L40S") == 362e12
    assert gpu_peak_flops("NVIDIA L4") == 121e12
    assert gpu_peak_flops("Some Future GPU") is None


# -- bad values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.activation_checkpointing=-1",
            r"train.activation_checkpointing=-1; valid: 0 \(none\), 1 \(every block\) or k > 1 \(every k-th block",
        ),
        ("train.compile=max-autotune", r"train.compile='max-autotune'; valid: none, model, blocks$"),
        ("train.peak_flops=0", r"train.peak_flops=0.0; valid: null \(auto\) or a positive FLOP/s per device$"),
    ],
    ids=["negative-checkpointing", "unknown-compile", "zero-peak"],
)
def test_bad_values_are_config_errors_naming_the_valid_ones(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_training(compose([*TINY_RUN, override]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()
