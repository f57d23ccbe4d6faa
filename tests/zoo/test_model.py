"""Model-level tests: configs compose and build, bad layouts fail with their message, and cached
inference (prefill + decode, chunked prefill) reproduces the parallel forward for every layout."""

from __future__ import annotations

import pytest
import torch

import zoo
from tests.helpers import assert_close
from zoo.config import compose, conf_dir
from zoo.errors import ConfigError
from zoo.model.config import mixer_defaults
from zoo.model.lm import build_mixer

MODEL_NAMES = sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
SMALL = ["model.d_model=64", "model.head_dim=16", "data.vocab_size=97"]


def small_model(arch: str, *overrides: str, seed: int = 0) -> zoo.HybridLM:
    cfg = compose([f"model={arch}", *SMALL, *overrides])
    torch.manual_seed(seed)
    return zoo.build_model(cfg.model).eval()


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_every_model_config_composes_and_builds(arch):
    cfg = compose([f"model={arch}"])
    model = zoo.build_model(cfg.model)
    assert len(model.blocks) == cfg.model.n_layers
    assert model.config.vocab_size == cfg.data.vocab_size
    assert model.num_params() > 0


def test_hybrid_layout_follows_attn_layers():
    model = small_model("hybrid_gla", "model.n_layers=4", "model.attn.layers=[1,-1]")
    assert model.layer_mixers == ["gla", "attn", "gla", "attn"]
    explicit = small_model("gla", "model.n_layers=3", "model.layers=[attn,gla,attn]")
    assert explicit.layer_mixers == ["attn", "gla", "attn"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.mixer=nope"], "unknown mixer 'nope'; valid mixers: attn, "),
        (["model.n_layers=4", "model.attn.layers=[4]"], "entry 4 is out of range for n_layers=4 (valid: 0..3)"),
        (["model.n_layers=4", "model.attn.layers=[1,1]"], "lists layer(s) [1] more than once"),
        (["model.head_dim=24"], "does not divide"),
        (
            ["model.n_layers=2", "model.attn.layers=[]", "model.layers=[gla]"],
            "model.layers has 1 entries but model.n_layers=2",
        ),
        (["+model.mixers.gla.bogus=1"], "got unknown option(s) ['bogus']"),
        (["+model.typo=1"], "unknown config key 'model.typo'; valid keys under 'model': attn, d_model,"),
    ],
    ids=[
        "unknown-mixer",
        "attn-index-out-of-range",
        "duplicate-index",
        "head-size",
        "layers-length",
        "unknown-mixer-option",
        "unknown-key",
    ],
)
def test_bad_model_configs_say_what_is_wrong(overrides, message):
    sizes = ["model.d_model=64", "model.head_dim=16", "model.n_layers=4", "model.attn.layers=[1]"]
    with pytest.raises(zoo.ConfigError) as err:  # from the config's schema (compose) or from building the model
        zoo.build_model(compose(["model=hybrid_gla", *sizes, *overrides]).model)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("branches", "message"),
    [
        ("[attn,nope]", "model.mixers.parallel.branches: unknown mixer 'nope'; valid mixers: attn, based, "),
        ("[attn,parallel]", "'parallel' is itself made of other mixers; a branch is a plain mixer"),
        ("[]", "model.mixers.parallel.branches must be a non-empty list of mixer names, got []"),
        ("[gla,gla]", "model.mixers.parallel.branches lists a mixer twice: ['gla', 'gla']"),
    ],
    ids=["unknown", "nested", "empty", "twice"],
)
def test_parallel_branches_are_registry_names(branches, message):
    with pytest.raises(zoo.ConfigError) as err:
        small_model("parallel", "model.n_layers=2", f"model.mixers.parallel.branches={branches}")
    assert message in str(err.value)


def test_a_mixer_option_missing_from_its_kwargs_is_named():
    """Constructors have no defaults (conf/mixer sets every option): a missing one is a ConfigError, not a
    TypeError from deep inside the constructor."""
    kwargs = mixer_defaults("gla")
    del kwargs["gate_low_rank_dim"]
    with pytest.raises(zoo.ConfigError, match=r"layer 3: mixer 'gla' is missing option\(s\) \['gate_low_rank_dim'\]"):
        build_mixer("gla", 64, 3, 4, 16, kwargs)


LAYOUTS = {
    "transformer": ("transformer", "model.n_layers=2"),
    "swa": ("transformer", "model.n_layers=2", "model.attn.window_size=5", "model.attn.num_kv_heads=2"),
    "gla": ("gla", "model.n_layers=2", "model.mixers.gla.chunk_size=8"),
    "hybrid_gla": ("hybrid_gla", "model.n_layers=3", "model.attn.layers=[1]", "model.mixers.gla.chunk_size=8"),
    "no_mlp": ("gla", "model.n_layers=2", "model.mixers.gla.chunk_size=8", "model.mlp=none"),
    # Zoology's attention: one head, learned absolute positions, no rotary
    "learned_positions": (
        "transformer",
        "model.n_layers=2",
        "model.learned_positions=32",
        "model.attn.rope_theta=null",
        "model.attn.num_heads=1",
    ),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_prefill_then_decode_matches_parallel(layout):
    model = small_model(*LAYOUTS[layout])
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :12], use_cache=True)  # prefill (T not a multiple of the chunk size)
        steps = [out.logits]
        for t in range(12, 21):  # one-token decode
            out = model(ids[:, t : t + 1], cache=out.cache)
            steps.append(out.logits)
    assert out.cache.seen_tokens == 21
    assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5, name=f"{layout} prefill+decode")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_chunked_prefill_matches_parallel(layout):
    model = small_model(*LAYOUTS[layout])
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        cache, pieces = None, []
        for a, b in [(0, 7), (7, 19), (19, 20), (20, 30)]:
            out = model(ids[:, a:b], cache=cache, use_cache=True)
            cache = out.cache
            pieces.append(out.logits)
    assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5, name=f"{layout} chunked prefill")


def test_logits_mask_computes_only_the_masked_positions():
    model = small_model("transformer", "model.n_layers=2")
    ids = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(5)) < 0.3
    with torch.no_grad():
        full = model(ids).logits
        picked = model(ids, logits_mask=mask).logits
    assert picked.shape == (int(mask.sum()), 97)
    assert_close(picked, full[mask], rtol=1e-5, atol=1e-6, name="masked logits")
    with pytest.raises(ValueError, match="not both"):
        model(ids, logits_to_keep=1, logits_mask=mask)


def test_learned_positions_refuse_longer_sequences_and_follow_each_row():
    model = small_model(*LAYOUTS["learned_positions"])
    with pytest.raises(ValueError, match="past model.learned_positions=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    # Without rotary the positions come only from the table: shifting a sequence changes its logits.
    ids = torch.randint(1, 97, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        alone = model(ids).logits[:, -1]
        after = model(torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1)).logits[:, -1]
        assert not torch.allclose(alone, after, atol=1e-4)
        # Left padding: the short row's positions start at its first real token, as when it is alone.
        mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 8)], 1).long()
        batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], 1), ids.new_ones(1, 12)])
        out = model.prefill(batch, attention_mask=torch.cat([mask, torch.ones_like(mask)]))
    assert_close(out.logits[0, -1], alone[0], rtol=1e-4, atol=1e-5, name="left-padded row vs alone")


def _cache_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_cache_bytes(o) for o in obj)
    if hasattr(obj, "__dict__"):
        # `_buf` is a KV cache's spare capacity, which the benchmark's peak memory counts, not the state
        return sum(_cache_bytes(v) for name, v in vars(obj).items() if not name.startswith("_"))
    return 0


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_state_bytes_counts_the_real_cache(layout):
    model = small_model(*LAYOUTS[layout])
    for seq_len in (3, 17):
        with torch.no_grad():
            out = model(torch.zeros(2, seq_len, dtype=torch.long), use_cache=True)
            out = model(torch.zeros(2, 1, dtype=torch.long), cache=out.cache)
        assert model.state_bytes(seq_len + 1, batch_size=2) == _cache_bytes(out.cache.layers)


def test_state_bytes_flat_for_linear_and_growing_for_attention():
    gla, attn = small_model("gla", "model.n_layers=2"), small_model("transformer", "model.n_layers=2")
    assert gla.state_bytes(1024) == gla.state_bytes(1_000_000) and not gla.state_grows
    assert attn.state_bytes(2048) == 2 * attn.state_bytes(1024) and attn.state_grows
    swa = small_model("transformer", "model.n_layers=2", "model.attn.window_size=64")
    assert swa.state_bytes(64) == swa.state_bytes(10_000) and not swa.state_grows  # a window does not grow


def test_greedy_generate_follows_parallel_argmax():
    model = small_model("hybrid_gla", "model.n_layers=3", "model.attn.layers=[1]")
    prompt = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 11)
    with torch.no_grad():
        logits = model(out).logits
    assert torch.equal(logits[:, 4:-1].argmax(-1), out[:, 5:])


@pytest.mark.parametrize("bias", [False, True])
def test_short_convolution_decode_path_equals_the_convolution(bias):
    """Pieces of <= 16 tokens take the weighted-sum path, longer ones conv1d: both give the same outputs."""
    from zoo.model.layers import ShortConvolution

    torch.manual_seed(0)
    conv = ShortConvolution(12, kernel_size=4, bias=bias)
    if bias:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 40, 12)
    whole, _ = conv(x)  # conv1d
    pieces, tail = [], None
    for piece in x.split([1, 5, 16, 1, 17], dim=1):  # weighted sums, then conv1d on the last piece
        y, tail = conv(piece, tail)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["gla", "deltanet", "based"])
def test_optimize_for_decode_changes_layout_not_values(arch, tmp_path):
    """Column-major weights and fused q/k/v projections give the same logits and generations, stay tied, save as
    the same checkpoint (byte for byte) and load back; the fused product is the only one a step runs."""
    model = small_model(arch, "model.attn.layers=[1]")
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        generated = model.generate(ids, max_new_tokens=5)
        model.save_pretrained(tmp_path / "row")
        model.optimize_for_decode()
        after = model(ids).logits
    fused = [m for mixer in model.mixers() for m, _ in mixer._fused.values()]
    assert len(fused) == len(model.mixers())  # every layer's q/k/v, attention's included
    for mixer in model.mixers():
        (group,) = mixer.fusable
        (weight, _), members = mixer._fused[group], [mixer.get_submodule(name) for name in group]
        assert all(m.weight.untyped_storage().data_ptr() == weight.weight.untyped_storage().data_ptr() for m in members)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.weight.stride(0) == 1 for m in linears)  # column-major: the fused ones' row slices included
    assert model.lm_head.weight is model.embed.weight
    assert_close(after, before, rtol=1e-5, atol=1e-6, name="logits")
    assert torch.equal(model.generate(ids, max_new_tokens=5), generated)
    model.save_pretrained(tmp_path / "col")
    saved = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("row", "col")]
    assert saved[0] == saved[1]
    with torch.no_grad():
        assert_close(zoo.from_pretrained(tmp_path / "col")(ids).logits, before, rtol=1e-5, atol=1e-6, name="reloaded")


def test_mlp_none_builds_blocks_of_their_mixer_alone():
    plain, bare = small_model("gla"), small_model("gla", "model.mlp=none")
    assert all(b.mlp is None and b.mlp_norm is None for b in bare.blocks)
    mlp_params = sum(p.numel() for b in plain.blocks for p in [*b.mlp.parameters(), *b.mlp_norm.parameters()])
    assert sum(p.numel() for p in bare.parameters()) == sum(p.numel() for p in plain.parameters()) - mlp_params
    assert bare.state_bytes(100) == plain.state_bytes(100)  # SwiGLU keeps no state either
    with pytest.raises(ConfigError, match="unknown mlp 'nope'; valid mlps: none, relu2, rwkv7_cmix, rwkv_cmix, swiglu"):
        small_model("gla", "model.mlp=nope")
