"""The Hydra config tree and the settings every command shares: `compose`, `conf_dir`, `pick_device`, `DTYPES`,
and the typed view of a composed config (`typed`, `from_mapping`, `load_option`).

Defaults live only in `conf/`; the typed schema of every config group is in `zoo.schemas`. Hydra lets
`+group.key=value` add a key past a schema, and `OmegaConf.to_object` then drops it silently, so every conversion
here checks the keys against the schema first. Every way a config can be wrong (an unknown key or group option, a
value of the wrong type, a missing value) is a `ConfigError` with a one-line message naming the full key."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from zoo import schemas
from zoo.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _corpus_vocab_size(path):
    from zoo.data.tokens import corpus_vocab_size  # only when a config asks

    return corpus_vocab_size(path)


# data=tokens reads its vocabulary size from the corpus's index (`${zoo.corpus_vocab:${.path}}`), so that
# model.vocab_size can follow it; every command that composes configs imports this module first.
OmegaConf.register_new_resolver("zoo.corpus_vocab", _corpus_vocab_size, replace=True)


def pick_device(name: str, what: str = "train.device") -> torch.device:
    """`auto` -> CUDA when available, else the CPU; a CUDA device (`cuda`, `cuda:N`) without CUDA is a
    ConfigError naming the setting `what`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name} but CUDA is not available; use {what}=cpu or auto")
    return torch.device(name)


def conf_dir() -> Path:
    """The Hydra config tree: `conf/` in a checkout, `zoo/conf` inside an installed wheel."""
    source = Path(__file__).resolve().parent.parent / "conf"
    if (source / "config.yaml").exists():
        return source
    return Path(str(resources.files("zoo.conf")))


def options(group: str) -> list[str]:
    """The options of a config group: the names of `conf/<group>/*.yaml`."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config `zoo-train` would see with these command-line overrides (no run folder is made); a config that
    does not compose, or has a key its schema does not know, is a one-line ConfigError.

    `compose(["model=gla", "model.d_model=128"]).model` is a model config for `zoo.build_model`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    schemas.register()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise _composition_error(e) from e
    check_keys(cfg)
    return cfg


def check_command_line(prog: str, config_name: str, argv: list[str] | None = None) -> None:
    """Compose a Hydra command line's overrides before Hydra does, and exit with code 2 and one line
    `<prog>: error: ...` when they do not compose: Hydra composes before the task function runs and reports such
    errors in several lines, with exit code 1.

    A sweep (`-m train.lr=1e-3,3e-3 model=gla,hybrid_gla`) is checked on its fixed overrides, then on each value
    of each swept key with the other sweeps left out (not every combination: that is the sweeper's job);
    `glob(...)` and `interval(...)` sweeps are left to the sweeper. Help, shell completion and another config tree
    (`--config-dir` and friends) are left to Hydra, as is a command line Hydra itself cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        from hydra._internal.utils import get_args_parser  # the parser @hydra.main itself uses (Hydra-internal)
    except ImportError:  # another Hydra version: its own (multi-line) report still names the error
        return
    try:
        args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
        if args.help or args.hydra_help or args.shell_completion or args.info or args.experimental_rerun:
            return
        if args.config_path or args.config_dir or args.config_name:
            return
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, HydraException):
        return
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    checks = [fixed]
    for sweep in (o for o in parsed if o.is_sweep_override()):
        try:
            checks += [[*fixed, f"{sweep.get_key_element()}={v}"] for v in sweep.sweep_string_iterator()]
        except HydraException:  # glob() needs the config loader, interval() has no values to list
            continue
    try:
        for overrides in checks:
            compose(overrides, config_name=config_name)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


# -- the typed view ------------------------------------------------------------------------------------------------


def typed(node: DictConfig, where: str | None = None) -> Any:
    """A composed, schema-backed node as its dataclass (`OmegaConf.to_object`), interpolations resolved. Keys the
    schema does not know, and values left `???`, are ConfigErrors. `where` names the node in messages (default:
    its path in the config it belongs to)."""
    attached = node._get_parent() is not None  # OmegaConf's errors then name the key from the config's root
    where = node._get_full_key(None) if where is None else where
    check_keys(node, where)
    try:
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as e:
        raise _key_error(e, "" if attached else where) from e


def from_mapping(schema: type, data: Mapping, where: str) -> Any:
    """`data` (a dict, or a node) as the dataclass `schema`, which it must fill completely; `where` is its config
    path (e.g. `eval.recall`), for messages. For the public functions that also take a plain dict."""
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), data)
    except OmegaConfBaseException as e:
        raise _key_error(e, where) from e
    return typed(node, where)


def load_option(group: str, option: str, overrides: Mapping | None = None) -> Any:
    """`conf/<group>/<option>.yaml` read through its schema, with `overrides` over its values, as the schema's
    dataclass (no Hydra composition: for options whose defaults list names only their schema, such as
    `data/<name>` and `eval/lm_eval/default`)."""
    path = conf_dir() / group / f"{option}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown option {group}={option}; valid options for '{group}': {', '.join(options(group))}")
    body = OmegaConf.load(path)
    named = [str(d).removeprefix("/").removesuffix("@_here_") for d in body.pop("defaults", []) if d != "_self_"]
    if len(named) != 1 or named[0] not in schemas.SCHEMAS:
        raise RuntimeError(f"{path}: the defaults list must name only its schema (one of zoo.schemas.SCHEMAS)")
    where = group.replace("/", ".")
    try:
        node = OmegaConf.merge(OmegaConf.structured(schemas.SCHEMAS[named[0]]), body, dict(overrides or {}))
    except OmegaConfBaseException as e:
        raise _key_error(e, where) from e
    return typed(node, where)


def check_keys(node: DictConfig | ListConfig, where: str = "") -> None:
    """Raise a ConfigError for the first key of `node` (at any depth) that the schema of its parent does not have;
    dict-typed fields (`Dict[str, Any]`, e.g. `model.mixers`) take any key."""
    for path, parent, key in _keys(node, where):
        schema = OmegaConf.get_type(parent)
        fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
        if fields is not None and key not in fields:
            raise ConfigError(_unknown(f"{path}.{key}" if path else str(key), fields))


def _keys(node, path: str) -> Iterator[tuple[str, DictConfig, Any]]:
    if node._is_missing() or node._is_none() or node._is_interpolation():
        return
    if isinstance(node, DictConfig):
        for key in node:
            yield path, node, key
            yield from _keys(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _keys(node._get_node(i), f"{path}[{i}]")


def _unknown(full_key: str, valid_keys) -> str:
    where = full_key.rpartition(".")[0] or None
    valid = ", ".join(sorted(str(k) for k in valid_keys if not str(k).startswith("_")))  # `_vocab`: not a setting
    return f"unknown config key '{full_key}'; valid keys {f'under {where!r}' if where else 'at the top level'}: {valid}"


def _key_error(e: OmegaConfBaseException, where: str = "") -> ConfigError:
    """One line for an OmegaConf error about one key; `where` prefixes a key relative to a detached node."""
    key = e.full_key or ""
    full = f"{where}.{key}" if where and key else where or key
    parent = e.parent_node
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and parent is not None and e.key not in parent:
        return ConfigError(_unknown(full, parent.keys()))
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(f"config key '{full}' has no value (???); set it, e.g. {full}=...")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ConfigError(f"config key '{full}': {first}" if full else first)


def _composition_error(e: BaseException) -> ConfigError:
    """One line for a failed Hydra composition: an unknown key (the OmegaConf error in the cause chain), an unknown
    group option (with the group's options), or else Hydra's own message on one line."""
    from hydra.errors import MissingConfigException

    # Hydra's own message names the override; an error inside a list element's node names the key from that node
    named = re.match(r"(?:Error merging override |Could not override ')([^=']+)", str(e))
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, MissingConfigException) and cause.missing_cfg_file:
            group, _, option = cause.missing_cfg_file.rpartition("/")
            if group:
                valid = ", ".join(cause.options or [])
                return ConfigError(f"unknown option {group}={option}; valid options for '{group}': {valid}")
        if isinstance(cause, OmegaConfBaseException) and cause.full_key:
            outer = named.group(1) if named else ""
            return _key_error(cause, "" if cause.full_key.startswith(outer) else outer)
        cause = cause.__cause__ or cause.__context__
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    lines = lines[: next((i for i, line in enumerate(lines) if line.startswith("Config search path")), len(lines))]
    return ConfigError(" ".join(lines) or type(e).__name__)
