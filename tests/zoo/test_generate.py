"""Inference for every architecture in `conf/model/`, pure and with one attention layer: greedy `generate`
follows the argmax of the parallel forward, chunked prefill changes nothing, left-padded batches of prompts of
different lengths generate what each prompt generates alone (no padding token reaches any state, every RoPE
layer continues each row at its own position, sliding windows evict per row), `logits_to_keep` and EOS."""

from __future__ import annotations

import pytest
import torch

import zoo
from tests.helpers import assert_close
from zoo.config import compose, conf_dir
from zoo.model.layers import rotary

ARCHS = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
VARIANTS = [(arch, hybrid) for arch in ARCHS for hybrid in (False, True)]
VARIANT_IDS = [f"{arch}{'+attn' if hybrid else ''}" for arch, hybrid in VARIANTS]
VOCAB = 97
CHUNK = 8  # chunk size of the chunked kernels: prompts span several chunks
WINDOW = 4  # sliding windows (swa, based) shorter than every prompt, so that prefill and decode evict
TOL = {"rtol": 1e-4, "atol": 1e-5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add overhead, and on a busy machine their spinning workers
    make the module ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(arch: str, hybrid: bool, window: int = WINDOW, seed: int = 0) -> zoo.HybridLM:
    """A 2-layer, d_model 32 model (layer 1 full attention when `hybrid`), every parameter perturbed so that
    zero-initialized terms (RWKV's LoRAs) are exercised, as in test_architectures. Untied embeddings and a
    larger init: with tied, tiny weights a random model only repeats its last input token (the embedding's
    dot product with itself wins), whatever its mixers compute, and greedy tokens would test nothing."""
    sizes = ["model.d_model=32", "model.head_dim=16", f"data.vocab_size={VOCAB}", "model.n_layers=2"]
    layout = [f"model.attn.layers={[1] if hybrid else []}", "model.tie_embeddings=false", "model.init_std=0.1"]
    cfg = compose([f"model={arch}", *sizes, *layout])
    for kwargs in cfg.model.mixers.values():
        if "chunk_size" in kwargs:
            kwargs.chunk_size = CHUNK
        if kwargs.get("window_size") is not None:
            kwargs.window_size = window
    torch.manual_seed(seed)
    model = zoo.build_model(cfg.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def random_ids(*shape: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def left_padded(prompts: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids, attention_mask)` `[B, T]` of 1-D prompts, left-padded to the longest."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :], mask[b, T - len(p) :] = p, 1
    return ids, mask


@pytest.mark.parametrize(("arch", "hybrid"), VARIANTS, ids=VARIANT_IDS)
def test_greedy_generate_is_the_argmax_of_the_parallel_forward(arch, hybrid):
    model = small_model(arch, hybrid)
    seq = random_ids(2, 7, seed=1)
    out = model.generate(seq, max_new_tokens=6)
    with torch.no_grad():
        for _ in range(6):  # recompute the whole sequence without a cache at every step
            nxt = model(seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    assert torch.equal(out, seq), f"{arch}: {out[:, 7:].tolist()} != {seq[:, 7:].tolist()}"


@pytest.mark.parametrize(("arch", "hybrid"), VARIANTS, ids=VARIANT_IDS)
def test_chunked_prefill_matches_one_call(arch, hybrid):
    model = small_model(arch, hybrid)
    prompt = random_ids(2, 20, seed=2)
    whole = model.prefill(prompt)
    with torch.no_grad():
        parallel = model(prompt).logits[:, -1:]
    assert_close(whole.logits, parallel, **TOL, name=f"{arch} prefill vs parallel")
    expected = model.generate(prompt, max_new_tokens=5)
    for chunk in (3, 4, 7):
        out = model.prefill(prompt, prefill_chunk=chunk)
        assert out.cache.seen_tokens == 20
        assert_close(out.logits, whole.logits, **TOL, name=f"{arch} prefill_chunk={chunk}")
        assert torch.equal(model.generate(prompt, max_new_tokens=5, prefill_chunk=chunk), expected), chunk


@pytest.mark.parametrize(("arch", "hybrid"), VARIANTS, ids=VARIANT_IDS)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(arch, hybrid):
    model = small_model(arch, hybrid)
    prompts = [random_ids(n, seed=10 + n) for n in (5, 13, 9)]  # the longest in the middle: no row is special
    ids, mask = left_padded(prompts, pad_id=7)
    T, new = ids.shape[1], 6
    out = model.generate(ids, max_new_tokens=new, attention_mask=mask, prefill_chunk=4)
    assert out.shape == (3, T + new)
    assert torch.equal(out[:, :T], ids), "the prompt comes back as given, padding included"
    alone = [model.generate(p[None], max_new_tokens=new)[0, len(p) :] for p in prompts]
    assert torch.equal(out[:, T:], torch.stack(alone)), f"{arch}: {out[:, T:].tolist()} vs {alone}"

    # The numbers behind the tokens: the stacked cache, fed the generated tokens, gives every row the logits
    # of the parallel forward over that row's real tokens alone.
    step = model.prefill(ids, attention_mask=mask, prefill_chunk=4)
    logits = [step.logits]
    with torch.no_grad():
        for t in range(new - 1):
            step = model(out[:, T + t : T + t + 1], cache=step.cache)
            logits.append(step.logits)
        logits = torch.cat(logits, dim=1)  # (3, new, vocab): predictions of the generated tokens
        for b, p in enumerate(prompts):
            real = torch.cat([p, out[b, T:-1]])[None]
            expected = model(real).logits[:, len(p) - 1 :]
            assert_close(logits[b : b + 1], expected, **TOL, name=f"{arch} row {b} (length {len(p)})")
    assert step.cache.seen_tokens.tolist() == [len(p) + new - 1 for p in prompts]


@pytest.mark.parametrize("window", [7, 1], ids=lambda w: f"window{w}")
def test_sliding_window_over_rows_of_different_lengths(window):
    """Window 7 over prompts of 5, 9 and 13 tokens: the short row's padding slots sit inside the window after
    prefill and leave it during decode. Window 1: every row keeps only its newest key."""
    model = small_model("swa", False, window=window)
    prompts = [random_ids(n, seed=20 + n) for n in (5, 9, 13)]
    ids, mask = left_padded(prompts)
    out = model.generate(ids, max_new_tokens=6, attention_mask=mask, prefill_chunk=3)
    for b, p in enumerate(prompts):
        assert torch.equal(out[b, ids.shape[1] :], model.generate(p[None], max_new_tokens=6)[0, len(p) :]), b
    cache = model.prefill(ids, attention_mask=mask).cache.layers[0].mixer
    assert cache.k.shape[2] == window
    if window <= min(len(p) for p in prompts):  # every row fills the window: no padding left, no mask
        assert cache.key_mask is None
    else:
        assert cache.key_mask.sum(1).tolist() == [min(len(p), window) for p in prompts]
    assert cache.offset.tolist() == [len(p) for p in prompts]


def test_sampling_with_top_k_1_is_greedy_and_a_generator_repeats_it():
    model = small_model("retnet", True)
    ids, mask = left_padded([random_ids(n, seed=30 + n) for n in (3, 8)])
    greedy = model.generate(ids, 5, attention_mask=mask)
    assert torch.equal(model.generate(ids, 5, temperature=0.7, top_k=1, attention_mask=mask), greedy)
    sampled = [
        model.generate(
            ids, 5, temperature=1.0, top_p=0.9, attention_mask=mask, generator=torch.Generator().manual_seed(0)
        )
        for _ in range(2)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], greedy)  # it did sample


def test_unpadded_mask_is_the_plain_batch():
    model = small_model("hybrid_gla", True)
    ids = random_ids(2, 6, seed=3)
    assert torch.equal(model.generate(ids, 4, attention_mask=torch.ones_like(ids)), model.generate(ids, 4))
    assert model.prefill(ids, attention_mask=torch.ones_like(ids)).cache.seen_tokens == 6  # not split per row


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ([[1, 1, 0], [1, 1, 1]], "rows \\[0\\] are right-padded.*requires left padding"),
        ([[1, 1, 1], [1, 0, 1]], "rows \\[1\\] are right-padded, have holes.*requires left padding"),
        ([[0, 0, 0], [1, 1, 1]], "or are empty.*requires left padding"),
        ([[0, 2, 1], [1, 1, 1]], "only 0 \\(padding\\) and 1"),
        ([[1, 1, 1]], "must have the shape of input_ids"),
    ],
    ids=["right-padded", "hole", "empty-row", "not-0-1", "wrong-shape"],
)
def test_bad_attention_mask_is_a_value_error(mask, message):
    model = small_model("transformer", False)
    with pytest.raises(ValueError, match=message):
        model.generate(random_ids(2, 3, seed=4), 2, attention_mask=torch.tensor(mask))


def test_eos_finishes_rows_at_different_steps_and_stops_when_all_are_done():
    model = small_model("hybrid_gla", True)
    ids, T, new = random_ids(4, 6, seed=5), 6, 12
    free = model.generate(ids, max_new_tokens=new)[:, T:]  # what each row generates without EOS

    def stops(token: int) -> list[int | None]:
        """Per row, the step at which `token` first comes (None: never)."""
        return [int(hits[0]) if len(hits := (row == token).nonzero()) else None for row in free]

    def interest(token: int) -> tuple[int, bool]:  # distinct finishing steps, whether a row never finishes
        return len({s for s in stops(token) if s is not None}), None in stops(token)

    eos = max(sorted(set(free.flatten().tolist())), key=interest)
    stop = stops(eos)
    assert interest(eos) >= (2, True), f"rows must finish at different steps and one never: {stop}"

    def expected(rows: list[int], n: int) -> torch.Tensor:
        out = free[rows, :n].clone()
        for i, b in enumerate(rows):
            if stop[b] is not None:
                out[i, stop[b] :] = eos  # a finished row is filled with EOS
        return torch.cat([ids[rows], out], dim=1)

    # a row that never produces EOS keeps the batch going to max_new_tokens
    everyone = list(range(len(ids)))
    n = new if None in stop else max(stop) + 1
    assert torch.equal(model.generate(ids, max_new_tokens=new, eos_token_id=eos), expected(everyone, n))
    # the rows that do finish: generation stops at the step the last of them finishes
    finishing = [b for b in everyone if stop[b] is not None]
    last = max(stop[b] for b in finishing)
    assert last + 1 < new
    out = model.generate(ids[finishing], max_new_tokens=new, eos_token_id=eos)
    assert out.shape == (len(finishing), T + last + 1)
    assert torch.equal(out, expected(finishing, last + 1))


def test_logits_to_keep_is_the_last_rows_of_the_full_logits():
    model = small_model("hybrid_gla", True)
    ids = random_ids(2, 11, seed=6)
    same = {"rtol": 1e-6, "atol": 1e-6}  # the same numbers up to the LM head's GEMM rounding for fewer rows
    with torch.no_grad():
        full = model(ids).logits
        for n in (1, 4, 11):
            assert_close(model(ids, logits_to_keep=n).logits, full[:, -n:], **same, name=f"logits_to_keep={n}")
        assert torch.equal(model(ids, logits_to_keep=0).logits, full)
        out = model(ids[:, :5], use_cache=True, logits_to_keep=2)
        assert_close(out.logits, full[:, 3:5], **same, name="with a cache")
        assert_close(model(ids[:, 5:], cache=out.cache, logits_to_keep=3).logits, full[:, -3:], **TOL)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)


def test_rotary_per_row_positions_equal_rotary_per_row():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 5, 2, 8, generator=g)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11], [100, 101, 102, 103, 104]])
    batched = rotary(x, positions, 10000.0)
    for b in range(3):
        assert torch.equal(batched[b : b + 1], rotary(x[b : b + 1], positions[b], 10000.0)), b
    # the rows really got different angles
    assert not torch.allclose(batched, rotary(x, positions[0], 10000.0))
