"""What every transformers architecture the zoo imports shares: a config read field by field (`HFConfig`), tensor
name rules that work both ways (`Rule`), and the contract of one family (`HFArch`).

Nothing here imports transformers: a checkpoint is a `config.json` read as data and safetensors tensors, mapped
onto zoo modules by name. Whatever the mapping cannot express exactly is an error that names the config field or
the tensor; an import never gives other logits silently.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from zoo.errors import CheckpointConfigError, CheckpointError
from zoo.model.config import ModelConfig


class HFConfig:
    """A transformers `config.json` (a dict), read by the arch that maps it. `path` names the file in errors."""

    def __init__(self, data: dict[str, Any], path: Path):
        self.data, self.path = data, path

    @property
    def model_type(self) -> str:
        return self.data.get("model_type", "")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def require(self, key: str) -> Any:
        if self.data.get(key) is None:
            raise CheckpointConfigError(f"{self.path}: {self.model_type} config has no {key!r}")
        return self.data[key]

    def refuse(self, key: str, value: Any, why: str) -> None:
        """An error naming a field whose value the zoo cannot compute exactly."""
        raise CheckpointConfigError(
            f"{self.path}: {key}={value!r} is not supported for model_type {self.model_type!r} ({why}); "
            "importing it would give different logits"
        )

    def expect(self, key: str, allowed: tuple, default: Any = None) -> Any:
        """The field's value (or `default` when absent), which must be one of `allowed`."""
        value = self.get(key, default)
        if value not in allowed:
            self.refuse(key, value, f"supported: {', '.join(repr(a) for a in allowed)}")
        return value


def as_float(value: Any) -> float:
    """A number from a config: transformers 5 writes infinities as `{"__float__": "Infinity"}`, older versions as the
    bare `Infinity` that Python's json reads."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


@dataclass(frozen=True)
class Rule:
    """One zoo tensor and the transformers tensor(s) it is made of: a plain copy for one name; for several, their
    concatenation along dim 0 in this order (e.g. SwiGLU's `gate_up` from `gate_proj` and `up_proj`), which
    export splits back into equal parts; with `rows` (start, stop), rows start..stop of that concatenation (e.g.
    the q conv of q / k / v convs stored as one conv over [q, k, v], or as three tensors whose split points are
    not the q / k / v sizes). On import the tensor is then multiplied by `scale` (None, a number, or one number per
    row: a fixed multiplier of the checkpoint's forward folded in, Falcon-H1's) and `shift` is added (a norm
    stored as w for `x * (1 + w)`, Qwen3.5's), both in fp32 as transformers computes them; export undoes both."""

    zoo: str
    hf: tuple[str, ...]
    rows: tuple[int, int] | None = None
    scale: float | tuple[float, ...] | None = None
    shift: float = 0.0

    def to_zoo(self, take) -> torch.Tensor:
        parts = [take(name, self.zoo) for name in self.hf]
        whole = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        whole = whole if self.rows is None else whole[self.rows[0] : self.rows[1]]
        if self.scale is None and not self.shift:
            return whole
        whole = whole.to(torch.promote_types(whole.dtype, torch.float32))
        if self.scale is not None:
            whole = whole * self._rows(whole)
        return whole + self.shift

    def to_hf(self, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.rows is not None:  # no family that slices exports yet: which rows go to which name is its own
            raise CheckpointError(f"{self.zoo} is rows of {self.hf}: exporting it is not supported")
        tensor = tensor - self.shift if self.shift else tensor
        if self.scale is not None:
            rows = self._rows(tensor)
            if not bool(rows.all()):
                raise CheckpointError(f"{self.zoo} was folded with a factor 0 on import: it cannot be exported")
            tensor = tensor / rows
        parts = tensor.chunk(len(self.hf), dim=0)
        return {name: part.contiguous() for name, part in zip(self.hf, parts, strict=True)}

    def _rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """`scale` shaped to multiply `tensor` row by row (`[rows, 1, ...]`, or a scalar)."""
        scale = torch.as_tensor(self.scale, dtype=tensor.dtype, device=tensor.device)
        return scale if scale.dim() == 0 else scale.reshape(-1, *(1,) * (tensor.dim() - 1))


def same(zoo: str, hf: str) -> Rule:
    return Rule(zoo, (hf,))


class HFArch(abc.ABC):
    """One family of transformers checkpoints (`model_types`), mapped onto a zoo `ModelConfig` and its tensors.

    - `zoo_config(cfg)`: the model, or a `CheckpointConfigError` naming the field that cannot be expressed;
    - `rules(config)`: how every zoo tensor is made from the checkpoint's tensors, by the names transformers
      writes today; `aliases` (regex, replacement) map other spellings onto them (`^backbone.` for `model.`);
    - `import_rules(config, cfg)`: the rules of an import from the checkpoint's config `cfg`: `rules(config)`, with
      the fixed multipliers that a family's config sets (Falcon-H1's) folded into them (`Rule.scale`);
    - `ignored(config)`: patterns of stored tensors that carry nothing the model needs (old rotary `inv_freq`
      buffers; a tied head, which transformers ignores too);
    - export: `hf_config(config)` is the transformers config of a zoo model, or a `CheckpointError` saying why the
      zoo model has no equivalent in this family."""

    model_types: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[tuple[tuple[str, str], ...]] = ()

    @abc.abstractmethod
    def zoo_config(self, cfg: HFConfig) -> ModelConfig: ...

    @abc.abstractmethod
    def rules(self, config: ModelConfig) -> list[Rule]: ...

    def import_rules(self, config: ModelConfig, cfg: HFConfig) -> list[Rule]:
        return self.rules(config)

    def export_rules(self, config: ModelConfig) -> list[Rule]:
        """The rules export runs backwards: `rules(config)` unless some of them read rows that have no single
        stored tensor to go back to."""
        return self.rules(config)

    def ignored(self, config: ModelConfig) -> tuple[str, ...]:
        return ()

    def hf_config(self, config: ModelConfig) -> dict[str, Any]:
        raise CheckpointError(f"the zoo exports no model as {'/'.join(self.model_types)}")

    def canonical(self, name: str) -> str:
        """A stored tensor's name as `rules` spell it."""
        for pattern, replacement in self.aliases:
            name = re.sub(pattern, replacement, name)
        return name

    def is_ignored(self, name: str, config: ModelConfig) -> bool:
        return any(re.fullmatch(pattern, name) for pattern in self.ignored(config))
