"""One place for every default: `conf/`. A mixer's constructor lists its options keyword-only and without Python
defaults, and `conf/mixer/<name>.yaml` gives every one of them a value, so a default can neither hide in code
nor drift between code and yaml. (MLPs take only `mlp_ratio`, a model field: they have no conf group.)"""

from __future__ import annotations

import inspect

import pytest
from omegaconf import OmegaConf

import zoo
from zoo.config import conf_dir
from zoo.model.config import mixer_defaults

FROM_THE_MODEL = {"self", "d_model", "layer_idx", "n_layers", "head_dim"}  # passed by HybridLM, not options


@pytest.mark.parametrize("name", sorted(zoo.MIXERS))
def test_mixer_options_are_exactly_the_yaml_keys_and_have_no_python_default(name):
    params = inspect.signature(zoo.MIXERS[name].__init__).parameters
    options = {p: v for p, v in params.items() if p not in FROM_THE_MODEL}
    assert all(v.kind is v.KEYWORD_ONLY for v in options.values()), f"{name}: options must be keyword-only"
    with_default = sorted(p for p, v in options.items() if v.default is not inspect.Parameter.empty)
    assert not with_default, f"{name}: defaults belong in conf/mixer/{name}.yaml, not in code: {with_default}"
    assert OmegaConf.load(conf_dir() / "mixer" / f"{name}.yaml").name == name
    conf = mixer_defaults(name)  # the yaml without its `name` key
    assert sorted(set(options) - set(conf)) == [], f"conf/mixer/{name}.yaml gives no value to these options"
    assert sorted(set(conf) - set(options)) == [], f"conf/mixer/{name}.yaml has keys the constructor does not take"
