"""Data defaults live in conf/data/ only: every builder in `zoo.data.DATASETS` takes each setting of its yaml as a
keyword-only argument without a default, its yaml sets every one (and nothing else), and its schema in
zoo/schemas.py has the same fields. (The mixer half of the rule is tests/zoo/test_defaults.py.)"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from omegaconf import MISSING, OmegaConf

from zoo.config import conf_dir, load_option, options
from zoo.data import DATASETS, build_copy_splits, build_mqar_splits, build_passkey_splits, build_text_splits
from zoo.data.hf import hf_documents
from zoo.evals.lm_eval.tasks import BUILDERS
from zoo.schemas import DATA_SCHEMAS

# keys of a data yaml that are not builder arguments: the builder's name, and interpolation helpers (`_vocab`)
NOT_SETTINGS = {"name", "defaults"}


def settings(keys) -> set[str]:
    return {k for k in keys if k not in NOT_SETTINGS and not k.startswith("_")}


def test_every_data_yaml_is_a_dataset_and_every_dataset_has_a_yaml():
    assert sorted(DATASETS) == options("data") == sorted(DATA_SCHEMAS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_builder_arguments_are_the_yaml_settings(name):
    yaml_keys = settings(OmegaConf.load(conf_dir() / "data" / f"{name}.yaml").keys())
    builder_keys = set(DATASETS[name].keys)
    assert builder_keys - yaml_keys == set(), f"conf/data/{name}.yaml does not set {sorted(builder_keys - yaml_keys)}"
    assert yaml_keys - builder_keys == set(), f"conf/data/{name}.yaml sets {sorted(yaml_keys - builder_keys)}, unused"
    schema_keys = settings(f.name for f in dataclasses.fields(DATA_SCHEMAS[name]))
    assert schema_keys == builder_keys, f"zoo.schemas.{DATA_SCHEMAS[name].__name__} differs from the builder"


@pytest.mark.parametrize(
    "builder",
    [
        *(spec.build for spec in DATASETS.values()),
        build_mqar_splits,
        build_passkey_splits,
        build_copy_splits,
        build_text_splits,
        hf_documents,
    ],
    ids=lambda f: f.__name__,
)
def test_builders_take_keyword_only_arguments_without_defaults(builder):
    # `**settings` passes settings on to the function the spec `forwards` them to, which is checked itself
    params = [p for p in inspect.signature(builder).parameters.values() if p.kind is not p.VAR_KEYWORD]
    positional = {"tokenizer"} if builder is build_text_splits else set()  # an object, not a setting
    assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name not in positional), [p.name for p in params]
    assert all(p.default is p.empty for p in params), [p.name for p in params if p.default is not p.empty]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_schema_fields_have_no_python_defaults(name):
    assert all(f.default in (dataclasses.MISSING, MISSING) for f in dataclasses.fields(DATA_SCHEMAS[name]))


def test_the_offline_perplexity_task_reads_the_text_corpus_settings_of_conf():
    """lm-eval's zoo_ppl scores data=text's validation documents: the same max_bytes, split and seed."""
    text = load_option("data", "text")
    params = BUILDERS["ppl"][0]({})  # the parameters the task's yaml metadata leaves to conf/data/text.yaml
    assert (params["text_paths"], params["text_max_bytes"]) == (text.paths, text.max_bytes)
    assert (params["text_val_fraction"], params["text_seed"]) == (text.val_fraction, text.seed)
    assert BUILDERS["ppl"][0]({"text_max_bytes": 1000})["text_max_bytes"] == 1000  # --metadata still overrides
