"""The config tree against its schemas (zoo/schemas.py): every root and every option of every group composes and
converts to its dataclasses, and a misspelt key or group option anywhere (command line, a yaml file) is a
one-line ConfigError that names the bad key and the valid ones."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import experiment_overrides
from zoo import schemas
from zoo.config import compose, conf_dir, from_mapping, options, typed
from zoo.errors import ConfigError

ROOTS = {"config": schemas.TrainRoot, "zoo_eval": schemas.EvalRoot, "zoo_bench": schemas.BenchRoot}
# every group option, as the override that selects it and the root that has the group
GROUP_OPTIONS = [
    *((f"{group}={name}", "config") for group in ("model", "data", "train", "eval") for name in options(group)),
    *((f"eval/{sub}={name}", "config") for sub in ("recall", "lm_eval", "final") for name in options(f"eval/{sub}")),
    *((f"bench={name}", "zoo_bench") for name in options("bench")),
    *((f"+experiment={name}", "config") for name in options("experiment")),
]
MISSPELT = [  # (root, override, the bad key as reported, a valid key that must be named)
    ("config", "+train.lrr=1", "train.lrr", "lr"),
    ("config", "train.lrr=1", "train.lrr", "lr"),
    ("config", "+train.log.tensorbord=true", "train.log.tensorbord", "tensorboard"),
    ("config", "+data.num_kv_pair=3", "data.num_kv_pair", "num_kv_pairs"),
    ("config", "data=text", "data.num_kv_pairs", "max_bytes"),  # a key of another dataset, see below
    ("config", "+model.d_modle=8", "model.d_modle", "d_model"),
    ("config", "+eval.batchsize=8", "eval.batchsize", "batch_size"),
    ("config", "+eval.recall.mqar.seq_lenz=[1]", "eval.recall.mqar.seq_lenz", "seq_lens"),
    ("config", "+eval.lm_eval.taskz=[]", "eval.lm_eval.taskz", "tasks"),
    ("config", "+eval.final.benchh={}", "eval.final.benchh", "bench"),
    ("config", "+eval.final.bench.lenghts=[1]", "eval.final.bench.lenghts", "lengths"),
    ("config", "+foo=1", "foo", "train"),
    ("zoo_eval", "+eval.recall.passkey.lenghts=[1]", "eval.recall.passkey.lenghts", "lengths"),
    ("zoo_eval", "+taskz=[]", "taskz", "lm_tasks"),
    ("zoo_bench", "+bench.archz=[]", "bench.archz", "archs"),
    ("zoo_bench", "bench.sizes=[{d_modle:8,n_layers:1}]", "bench.sizes.d_modle", "d_model"),
]


def one_line_error(overrides, config_name="config") -> str:
    with pytest.raises(ConfigError) as info:
        typed(compose(overrides, config_name))
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("config_name", sorted(ROOTS))
def test_every_root_composes_into_its_schema(config_name):
    root = typed(compose(["path=run"] if config_name == "zoo_eval" else [], config_name))
    assert type(root) is ROOTS[config_name]


@pytest.mark.parametrize(("override", "config_name"), GROUP_OPTIONS, ids=[o for o, _ in GROUP_OPTIONS])
def test_every_group_option_composes_and_converts(override, config_name, token_corpus):
    if override.startswith("+experiment="):
        overrides = experiment_overrides(override.split("=")[1], token_corpus)
    else:  # data=tokens: data.path is the one value users must give
        overrides = [override, *([f"data.path={token_corpus}"] if override == "data=tokens" else [])]
    root = typed(compose(overrides, config_name))  # every value set (no ???) and of its schema's type
    assert type(root) is ROOTS[config_name]
    if override.startswith("data="):
        assert type(root.data) is schemas.DATA_SCHEMAS[override.split("=")[1]]


def test_data_tokens_without_a_path_is_one_line_naming_it():
    assert "Missing mandatory value: data.path" in one_line_error(["data=tokens"])


def test_the_options_of_every_group_are_found():
    assert "hybrid_gla" in options("model") and options("eval/recall") == ["default"]
    assert not any(o.startswith("_") for g in ("model", "data", "train", "bench") for o in options(g))


@pytest.mark.parametrize(("config_name", "override", "key", "valid"), MISSPELT, ids=[m[1] for m in MISSPELT])
def test_a_misspelt_key_names_itself_and_the_valid_ones(config_name, override, key, valid):
    overrides = [override, "data.num_kv_pairs=3"] if override == "data=text" else [override]
    message = one_line_error(overrides, config_name)
    assert f"unknown config key '{key}'" in message and "valid keys" in message, message
    assert valid in message.split("valid keys", 1)[1], message


def test_a_value_of_the_wrong_type_names_its_key():
    message = one_line_error(["train.lr=fast"])
    assert message.startswith("config key 'train.lr': Value 'fast'"), message
    assert one_line_error([], "zoo_eval") == "config key 'path' has no value (???); set it, e.g. path=..."


@pytest.mark.parametrize(
    ("override", "config_name", "group", "valid"),
    [
        ("model=glaa", "config", "model", "gla"),
        ("data=mqqar", "config", "data", "mqar"),
        ("+experiment=quickstrt", "config", "experiment", "quickstart"),
        ("eval/recall=nope", "config", "eval/recall", "default"),
        ("bench=readmee", "zoo_bench", "bench", "readme"),
    ],
)
def test_a_misspelt_group_option_names_the_valid_options(override, config_name, group, valid):
    message = one_line_error([override], config_name)
    wrong = override.lstrip("+").split("=")[1]
    assert message.startswith(f"unknown option {group}={wrong}; valid options for '{group}': "), message
    listed = message.split(": ", 1)[1].split(", ")
    assert valid in listed and "schema" not in message, message  # the schemas are not options of the groups


def test_a_misspelt_key_in_a_yaml_file_fails(tmp_path):
    """An experiment (and a user's own dataset yaml) on Hydra's search path, each with one misspelt key."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "typo.yaml").write_text("# @package _global_\ntrain:\n  max_stepz: 10\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text(
        "defaults:\n  - /schema/data/mqar@_here_\n  - _self_\n\nname: mqar\nnum_kv_pair: 8\n"
    )
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    message = one_line_error([searchpath, "+experiment=typo"])
    assert (
        message.startswith("unknown config key 'train.max_stepz'; valid keys under 'train':") and "max_steps" in message
    )
    message = one_line_error([searchpath, "data=mine"])
    assert message.startswith("unknown config key 'data.num_kv_pair'") and "num_kv_pairs" in message
    assert typed(compose([searchpath, "data=mqar"])).data.num_kv_pairs == 4  # the search path itself is fine


def test_from_mapping_checks_a_plain_dict_against_the_schema():
    section = {
        "seq_lens": [8],
        "num_kv_pairs": [2],
        "random_non_queries": True,
        "num_examples": 4,
        "batch_size": 4,
        "seed": 0,
    }
    assert from_mapping(schemas.MqarRecall, section, "eval.recall.mqar").seq_lens == [8]
    with pytest.raises(ConfigError, match=r"unknown config key 'eval.recall.mqar.seqlens'; valid keys .*seq_lens"):
        from_mapping(schemas.MqarRecall, {**section, "seqlens": [8]}, "eval.recall.mqar")
    with pytest.raises(ConfigError, match=r"config key 'eval.recall.mqar.seed' has no value \(\?\?\?\); set it"):
        from_mapping(schemas.MqarRecall, {k: v for k, v in section.items() if k != "seed"}, "eval.recall.mqar")


def test_the_typed_bench_config_pickles():
    """zoo-bench sends each job, with its BenchConfig, to a spawned process."""
    bench = typed(compose([], "zoo_bench")).bench
    assert pickle.loads(pickle.dumps(bench)) == bench and isinstance(bench.sizes[0], schemas.BenchSize)


def test_the_schema_module_imports_nothing_heavy():
    tree = ast.parse((Path(schemas.__file__)).read_text())
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in getattr(n, "names", [])
    }
    assert {m.split(".")[0] for m in imported} <= {"__future__", "dataclasses", "typing", "omegaconf", "hydra"}


def test_every_yaml_of_a_group_names_its_schema():
    """Each file names its schema, or extends an option of its group that does (the architectures extend
    transformer.yaml, the bench options default.yaml)."""
    for path in conf_dir().rglob("*.yaml"):
        group = path.parent.relative_to(conf_dir()).as_posix()
        if group in (".", "mixer", "lm_eval_tasks", "experiment") or group.startswith("hydra"):
            continue
        defaults = (path.read_text().split("defaults:", 1) + [""])[1]
        entries = [line.strip()[2:].split("#")[0].strip() for line in defaults.splitlines() if line.strip()[:2] == "- "]
        named = [e.removeprefix("/").removesuffix("@_here_") for e in entries]
        assert any(n in schemas.SCHEMAS or n in options(group) for n in named), path


def test_the_command_line_reports_a_misspelt_key_in_one_line(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.train", "+train.lrr=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("zoo-train: error: unknown config key 'train.lrr'; valid keys under 'train':"), line
    assert "max_steps" in line and not any(tmp_path.iterdir())  # nothing ran
