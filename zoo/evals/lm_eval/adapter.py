"""The `zoo` model type of lm-eval: `ZooLM` wraps a hybrid-zoo checkpoint (or a loaded `HybridLM`) behind
lm-eval's `LM` interface. `register()` adds it to lm-eval's registry under the name `zoo`; `python -m zoo.lm_eval`
and `evaluate_model` call it, so `lm_eval.simple_evaluate(model="zoo", model_args={...})` works after either
(or after `zoo.evals.lm_eval.adapter.register()`)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm.auto import tqdm

from zoo.config import DTYPES, load_option, pick_device
from zoo.errors import CheckpointError, ConfigError
from zoo.io.checkpoint import from_pretrained
from zoo.io.runs import locate
from zoo.model.lm import HybridLM
from zoo.schemas import LMEvalConfig

log = logging.getLogger(__name__)

GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}  # what generate_until honours


def lm_eval_defaults() -> LMEvalConfig:
    """`conf/eval/lm_eval/default.yaml` (read through its schema): the defaults of `ZooLM` and of zoo-eval's
    lm-eval run."""
    return load_option("eval/lm_eval", "default")


def training_seq_len(path) -> int | None:
    """`data.seq_len` of the run that wrote a checkpoint: read from `.hydra/config.yaml` of the run folder (`path`
    itself, or the parent of a `checkpoint/` folder). None when `path` is not inside a run folder."""
    from omegaconf import OmegaConf

    path = Path(path)
    for run in (path, path.parent):
        cfg_file = run / ".hydra" / "config.yaml"
        if cfg_file.is_file():
            value = OmegaConf.select(OmegaConf.load(cfg_file), "data.seq_len", default=None)
            return int(value) if isinstance(value, int) else None
    return None


def _checkpoint_path(pretrained: str) -> str:
    """A run or checkpoint folder's checkpoint (its `.old` twin after an interrupted write); else a hub id."""
    try:
        return str(locate(pretrained)[0])
    except CheckpointError:
        return str(pretrained)


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _positive_int(name: str, value) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"zoo model: {name} must be an integer, got {value!r}") from None
    if out < 1:
        raise ConfigError(f"zoo model: {name} must be >= 1, got {out}")
    return out


@torch.inference_mode()
def _forward(model, ids: torch.Tensor, cache=None, use_cache: bool = False, logits_to_keep: int = 0):
    return model(ids, cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)


class ZooLM(LM):
    """lm-eval's view of a hybrid-zoo checkpoint (registered as the model type `zoo`).

    model_args (defaults from `conf/eval/lm_eval/default.yaml`):
    - `pretrained`: a checkpoint folder, a run folder (its `checkpoint/` is loaded) or a Hugging Face Hub id;
      `ZooLM.from_model(model)` wraps an already-loaded `HybridLM` instead;
    - `device`: `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`; a CUDA device without CUDA is an error.
      `python -m zoo.lm_eval` leaves the device to this default unless `--device` is given;
    - `dtype`: `auto` (as loaded: float32), `float32`, `bfloat16`, `float16`;
    - `batch_size`: an integer (or integer string); `max_batch_size` is accepted and unused (no `auto` batching);
    - `max_length`: tokens the model reads per forward. Default: the training `data.seq_len` recorded in the run
      folder (`.hydra/config.yaml`) of the checkpoint, else `fallback_max_length` (2048);
    - `max_gen_toks`: tokens to generate when a request does not say (256); `prefill_chunk`: prompt tokens per
      forward while generating (4096), which keeps a linear model's memory flat on long prompts.
    Keys given in model_args win over the same keys lm-eval adds from its own flags (`--batch_size`, `--device`).

    Scoring:
    - `loglikelihood`: context and continuation are encoded together and split at the context's token count (as
      lm-eval's HF adapter does, trailing spaces of the context moved to the continuation); an empty context is
      the eos token. The sequence is cut from the left to `max_length + 1` tokens, so that the model reads at most
      `max_length` (the continuation itself must fit). Requests run longest first, right-padded, one forward per
      batch.
    - `loglikelihood_rolling`: each document after an eos token. A model whose cache does not grow with length
      (`not model.state_grows`: linear mixers or windowed attention only) reads the document
      `max_length` tokens at a time through its cache, so every token is scored given the whole document before
      it; a model with full-attention layers scores lm-eval's disjoint rolling windows of `max_length` tokens.
    - `generate_until`: `model.generate` on left-padded batches, greedy unless the request samples (`do_sample`,
      `temperature`, `top_k`, `top_p`); `max_gen_toks` new tokens at most, stopped by the eos token; the text is
      cut at the first `until` string. The context keeps its last `max_length - max_gen_toks` tokens.
    """

    def __init__(
        self,
        pretrained=None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str | None = None,
        max_length: int | str | None = None,
        max_gen_toks: int | str | None = None,
        prefill_chunk: int | str | None = None,
        max_batch_size: int | str | None = None,  # lm-eval passes it; it only matters to `auto` batching
    ):
        super().__init__()
        if pretrained is None:
            raise ConfigError("zoo model: model_args needs pretrained=<checkpoint folder, run folder or hub id>")
        defaults = lm_eval_defaults()
        dtype = defaults.dtype if dtype is None else str(dtype)
        if dtype != "auto" and dtype not in DTYPES:
            raise ConfigError(f"zoo model: dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
        if isinstance(pretrained, HybridLM):
            # the caller's model: converted (device, dtype) on a copy, so the caller's own model is left as it was
            model, source = pretrained, None
            target = pick_device(str(device), "device") if device not in (None, "auto") else None
            dtype_to = DTYPES[dtype] if dtype != "auto" else None
            first = next(model.parameters())
            if (target is not None and first.device != target) or (dtype_to is not None and first.dtype != dtype_to):
                model = copy.deepcopy(model).to(device=target, dtype=dtype_to)
        else:
            source = _checkpoint_path(str(pretrained))
            model = from_pretrained(source, device=pick_device(str(device or defaults.device), "device"))
            if dtype != "auto":
                model = model.to(DTYPES[dtype])
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise CheckpointError("zoo model: the checkpoint has no tokenizer (tokenizer.json); lm-eval needs text")
        self._device = next(model.parameters()).device
        if str(batch_size).startswith("auto"):
            raise ConfigError("zoo model: batch_size=auto is not supported; give an integer batch size")
        self.batch_size = _positive_int("batch_size", defaults.batch_size if batch_size is None else batch_size)
        if max_length is None:
            seq_len = None if source is None else training_seq_len(pretrained)
            max_length = defaults.fallback_max_length if seq_len is None else seq_len
        self.max_length = _positive_int("max_length", max_length)
        self.max_gen_toks = _positive_int(
            "max_gen_toks", defaults.max_gen_toks if max_gen_toks is None else max_gen_toks
        )
        self.prefill_chunk = _positive_int(
            "prefill_chunk", defaults.prefill_chunk if prefill_chunk is None else prefill_chunk
        )
        # a cache that does not grow with the length can carry a whole document from window to window
        self.streams = not model.state_grows

    @classmethod
    def from_model(cls, model, **kwargs) -> ZooLM:
        """Wrap an already-loaded `HybridLM` (with its `tokenizer`); kwargs as the model_args (no `pretrained`)."""
        return cls(pretrained=model, **kwargs)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> ZooLM:
        # an explicit device that does not exist is an error (pick_device); `python -m zoo.lm_eval` passes `auto`
        # when the user gave no --device, rather than lm-eval's default cuda:0
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ZooLM:
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # -- tokens ------------------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def tok_encode(self, text: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(text))
        except ValueError as e:
            raise ConfigError(
                f"zoo model: this checkpoint's {type(self.tokenizer).__name__} cannot encode the task's text ({e}); "
                "integer-token checkpoints read whitespace-separated integers (zoo_mqar), byte-level ones any text"
            ) from None

    def _prefix_id(self, what: str) -> int:
        """The eos token, which conditions a first token that has no context."""
        if self.eot_token_id is None:
            raise ConfigError(
                f"zoo model: {what} needs an eos token to condition the first token on, and this checkpoint's "
                f"{type(self.tokenizer).__name__} has none; give every request a non-empty context"
            )
        return self.eot_token_id

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:  # "a " + "b" -> "a" + " b", as lm-eval's adapters do: the space belongs to the next word
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self._prefix_id("a request with an empty context")], self.tok_encode(continuation)
        whole = self.tok_encode(context + continuation)
        n = len(self.tok_encode(context))
        return whole[:n], whole[n:]

    # -- loglikelihood -----------------------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        scores = self._score(pairs, disable_tqdm)
        for req, score in zip(requests, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, score)
        return scores

    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(sum of log-probs, all greedy) of each continuation given its context, from one plain forward."""
        limit = self.max_length + 1  # the model reads all but the last token
        seqs, truncated = [], 0
        for ctx, cont in pairs:
            if len(cont) > self.max_length:
                raise ConfigError(
                    f"zoo model: a continuation of {len(cont)} tokens does not fit max_length="
                    f"{self.max_length}; raise max_length"
                )
            truncated += len(ctx) + len(cont) > limit
            seqs.append(((ctx + cont)[-limit:], len(cont)))
        if truncated:
            log.warning(
                "zoo model: %d of %d contexts cut from the left to fit max_length=%d",
                truncated,
                len(seqs),
                self.max_length,
            )
        out: list[tuple[float, bool]] = [(0.0, True)] * len(seqs)  # an empty continuation: probability 1
        order = sorted((i for i, (_, n) in enumerate(seqs) if n), key=lambda i: -len(seqs[i][0]))
        for batch in tqdm(list(_chunks(order, self.batch_size)), desc="loglikelihood", disable=disable_tqdm):
            width = len(seqs[batch[0]][0]) - 1
            ids = torch.zeros(len(batch), width, dtype=torch.long)  # right padding never reaches earlier positions
            for row, i in enumerate(batch):
                seq = seqs[i][0]
                ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
            first = min(len(seqs[i][0]) - 1 - seqs[i][1] for i in batch)  # earliest position any row scores
            logits = _forward(self.model, ids.to(self.device), logits_to_keep=width - first).logits
            for row, i in enumerate(batch):
                seq, n = seqs[i]
                end = len(seq) - 1 - first
                logp = logits[row, end - n : end].float().log_softmax(-1)
                target = torch.tensor(seq[-n:], device=logp.device)
                total = logp.gather(-1, target[:, None]).sum().item()
                out[i] = (total, bool((logp.argmax(-1) == target).all()))
        return out

    # -- rolling loglikelihood ---------------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        prefix = self._prefix_id("loglikelihood_rolling")
        docs = [self.tok_encode(req.args[0]) for req in requests]
        totals = (
            self._rolling_streamed(docs, prefix, disable_tqdm) if self.streams else self._rolling_windows(docs, prefix)
        )
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _rolling_windows(self, docs: list[list[int]], prefix: int) -> list[float]:
        """Attention models: lm-eval's disjoint windows (each window conditioned on the token before it)."""
        windows, owners = [], []
        for d, tokens in enumerate(docs):
            for window in get_rolling_token_windows(tokens, prefix, self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(d)
        totals = [0.0] * len(docs)
        for d, (logp, _) in zip(owners, self._score(windows), strict=True):
            totals[d] += logp
        return totals

    def _rolling_streamed(self, docs: list[list[int]], prefix: int, disable_tqdm: bool) -> list[float]:
        """Fixed-state models: documents batched (right-padded) and read `max_length` tokens per forward, carrying
        the cache, so each token is conditioned on everything before it in its document."""
        totals = [0.0] * len(docs)
        order = sorted((i for i, d in enumerate(docs) if d), key=lambda i: -len(docs[i]))
        for batch in tqdm(list(_chunks(order, self.batch_size)), desc="rolling", disable=disable_tqdm):
            width = len(docs[batch[0]])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: padding, not scored
            for row, i in enumerate(batch):
                tokens = docs[i]
                ids[row, : len(tokens)] = torch.tensor([prefix, *tokens[:-1]])
                targets[row, : len(tokens)] = torch.tensor(tokens)
            ids, targets = ids.to(self.device), targets.to(self.device)
            sums = torch.zeros(len(batch), dtype=torch.float64, device=self.device)
            cache = None
            for start in range(0, width, self.max_length):
                out = _forward(self.model, ids[:, start : start + self.max_length], cache=cache, use_cache=True)
                cache = out.cache
                logp = out.logits.float().log_softmax(-1)
                target = targets[:, start : start + self.max_length]
                picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
                sums += (picked * (target >= 0)).sum(1).double()
            for row, i in enumerate(batch):
                totals[i] = sums[row].item()
        return totals

    # -- generation --------------------------------------------------------------------------------------------------
    def _gen_settings(self, gen_kwargs: dict) -> dict:
        kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks))
        unknown = sorted(set(kwargs) - GEN_KEYS)
        if unknown:
            raise ConfigError(f"zoo model: generation kwargs {unknown} are not supported; valid: {sorted(GEN_KEYS)}")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if self.eot_token_id is not None:  # a tokenizer whose eos has a text form also stops on that text
            eos_text = self.tokenizer.decode([self.eot_token_id])
            if eos_text and eos_text not in until:
                until.append(eos_text)
        max_new = _positive_int("max_gen_toks", kwargs["max_gen_toks"])
        if max_new >= self.max_length:
            raise ConfigError(
                f"zoo model: max_gen_toks={max_new} leaves no room for a context in max_length={self.max_length}"
            )
        # greedy unless the request samples; do_sample without a temperature samples at temperature 1
        temperature = (float(kwargs.get("temperature") or 0.0) or 1.0) if kwargs.get("do_sample") else 0.0
        top_k, top_p = kwargs.get("top_k"), kwargs.get("top_p")
        return {
            "until": [s for s in until if s],
            "max_new": max_new,
            "temperature": temperature,
            "top_k": None if top_k is None else int(top_k),
            "top_p": None if top_p is None else float(top_p),
        }

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with the same generation kwargs run together
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        truncated = 0
        for idx in groups.values():
            s = self._gen_settings(requests[idx[0]].args[1])
            keep = self.max_length - s["max_new"]
            contexts = {}
            for i in idx:
                tokens = self.tok_encode(requests[i].args[0]) or [self._prefix_id("an empty generation context")]
                truncated += len(tokens) > keep
                contexts[i] = tokens[-keep:]
            order = sorted(idx, key=lambda i: -len(contexts[i]))
            for batch in tqdm(list(_chunks(order, self.batch_size)), desc="generate_until", disable=disable_tqdm):
                width = len(contexts[batch[0]])
                ids = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)  # left padding, HF's convention
                for row, i in enumerate(batch):
                    n = len(contexts[i])
                    ids[row, width - n :] = torch.tensor(contexts[i])
                    mask[row, width - n :] = 1
                out = self.model.generate(
                    ids.to(self.device),
                    s["max_new"],
                    temperature=s["temperature"],
                    top_k=s["top_k"],
                    top_p=s["top_p"],
                    eos_token_id=self.eot_token_id,
                    attention_mask=mask.to(self.device),
                    prefill_chunk=self.prefill_chunk,
                )
                for row, i in enumerate(batch):
                    results[i] = self._finish(out[row, width:].tolist(), s["until"])
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        if truncated:
            log.warning(
                "zoo model: %d of %d generation contexts cut to their last %d tokens (max_length=%d)",
                truncated,
                len(requests),
                self.max_length - self.max_gen_toks,
                self.max_length,
            )
        return results

    def _finish(self, new_tokens: list[int], until: list[str]) -> str:
        """The generated text: tokens up to the first eos, decoded, cut at the first stop string."""
        if self.eot_token_id is not None and self.eot_token_id in new_tokens:
            new_tokens = new_tokens[: new_tokens.index(self.eot_token_id)]
        text = self.tokenizer.decode(new_tokens)
        cuts = [text.find(stop) for stop in until if stop in text]
        return text[: min(cuts)] if cuts else text

    def get_model_info(self) -> dict:
        dtype = next(self.model.parameters()).dtype
        return {
            "model_num_parameters": self.model.num_params(),
            "model_dtype": str(dtype),
            "max_length": self.max_length,
            "layer_mixers": list(self.model.layer_mixers),
        }


def register() -> None:
    """Add `ZooLM` to lm-eval's model registry as `zoo` (once; later calls do nothing)."""
    from lm_eval.api.registry import MODEL_REGISTRY

    if MODEL_REGISTRY.get("zoo", None) is not ZooLM:
        register_model("zoo")(ZooLM)
