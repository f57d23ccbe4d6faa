"""llama.cpp as a zoo-bench peer: the same transformers checkpoint that `zoo-bench path=<folder>` imports, converted
to GGUF by llama.cpp's own converter (`convert_hf_to_gguf.py`) at each of `bench.llamacpp` (f32, f16, bf16,
q8_0) and timed through llama-cpp-python at the same prompt lengths, generated tokens, thread count and budgets.

Needs `llama-cpp-python` (pip install llama-cpp-python; it compiles llama.cpp, ~8 minutes on 2 idle cores). The
converter is not in its wheel: it is taken from the source distribution of the installed version (the same
llama.cpp commit), downloaded once by pip into `~/.cache/hybrid-zoo/llama.cpp/<version>/`, or from a llama.cpp
checkout named by `bench.llamacpp_converter`. GGUF files are cached in `~/.cache/hybrid-zoo/gguf/`.

A checkpoint without a tokenizer (the random-init ones zoo-bench and `scripts/bench_vs_llamacpp.py` build) gets
a placeholder vocabulary of the model's size for the conversion: the benchmark feeds token ids, so the
vocabulary's text never matters, only its size. It is written twice, as a SentencePiece model (needs
`sentencepiece`; the Llama and Mamba-2 converters take it) and as a byte-level BPE `tokenizer.json` (the Qwen3.5
and Nemotron-H converters load a BPE tokenizer through transformers). llama.cpp's converter names a BPE
tokenizer's pre-tokenizer by hashing how it splits a test text, which no placeholder can match, so for a
placeholder the converter runs with that lookup answering llama.cpp's "default" pre-tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from zoo.errors import ZooError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # the converter's --outtype choices that are plain weight formats
PREFIX = "llama.cpp:"  # a job name: llama.cpp:<outtype>[+fa]:<checkpoint folder>
WORKER = Path(__file__).with_name("llamacpp_worker.py")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hybrid-zoo"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer.model.v3", "tekken.json")


def installed_version() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        raise ZooError(
            "llama.cpp rows need llama-cpp-python: pip install llama-cpp-python (it compiles llama.cpp from source, "
            "~8 minutes on 2 cores), or set bench.llamacpp=[] to leave them out"
        )
    return importlib.metadata.version("llama_cpp_python")


def converter(checkout: str | None) -> Path:
    """`convert_hf_to_gguf.py` of a llama.cpp checkout, or of the installed llama-cpp-python's source distribution
    (downloaded and unpacked once: the converter, its `conversion` package, `gguf-py` and the vocab files)."""
    if checkout is not None:
        script = Path(checkout).expanduser() / "convert_hf_to_gguf.py"
        if not script.is_file():
            raise ZooError(f"bench.llamacpp_converter={checkout}: no convert_hf_to_gguf.py there (not llama.cpp)")
        return script
    version = installed_version()
    root = CACHE / "llama.cpp" / version
    script = root / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", tmp]
        done = subprocess.run([*cmd, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise ZooError(
                f"could not download the llama-cpp-python {version} source distribution for llama.cpp's converter "
                f"({done.stderr.strip()[-300:]}); point bench.llamacpp_converter at a llama.cpp checkout instead"
            )
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-")
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                rel = member.name.partition("/vendor/llama.cpp/")[2]
                if rel.startswith(wanted) and (member.isfile() or member.isdir()):
                    member.name = rel
                    tar.extract(member, root.with_suffix(".partial"), filter="data")
    root.with_suffix(".partial").rename(root)  # whole or not at all: a cut download is fetched again
    return script


def placeholder_tokenizer(folder: Path, vocab_size: int) -> None:
    """A SentencePiece model of `vocab_size` pieces (unk, bos, eos, the 256 byte pieces, then `▁t<i>`) written as
    `folder/tokenizer.model`: enough for the converter and llama.cpp to load a checkpoint that has no tokenizer."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as e:
        raise ZooError(
            "this checkpoint has no tokenizer; llama.cpp's converter needs one, and the placeholder vocabulary "
            "zoo-bench writes for it needs sentencepiece: pip install sentencepiece"
        ) from e
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.UNIGRAM, vocab_size, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    model.normalizer_spec.name, model.normalizer_spec.add_dummy_prefix = "identity", False
    kind = pb.ModelProto.SentencePiece
    for piece, t in (("<unk>", kind.UNKNOWN), ("<s>", kind.CONTROL), ("</s>", kind.CONTROL)):
        model.pieces.add(piece=piece, score=0.0, type=t)
    for b in range(256):
        model.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=kind.BYTE)
    for i in range(vocab_size - len(model.pieces)):
        model.pieces.add(piece=f"\u2581t{i}", score=-float(i + 1), type=kind.NORMAL)
    (folder / "tokenizer.model").write_bytes(model.SerializeToString())


def placeholder_bpe(folder: Path, vocab_size: int) -> None:
    """A byte-level BPE `tokenizer.json` of `vocab_size` tokens (the 256 byte symbols, one merge, then `t<i>`
    fillers), with a `tokenizer_config.json` that makes transformers load it as is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = "\u0120t"  # llama.cpp refuses a BPE vocabulary without merges
    vocab = {ch: i for i, ch in enumerate([*alphabet, merged])}
    if vocab_size < len(vocab):
        raise ZooError(f"a placeholder BPE vocabulary needs at least {len(vocab)} tokens; the model has {vocab_size}")
    vocab.update({f"t{i}": len(vocab) + i for i in range(vocab_size - len(vocab))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("\u0120", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


# runs the converter with the BPE pre-tokenizer lookup answering "default" (only for a placeholder vocabulary)
_PLACEHOLDER_RUN = """
import runpy, sys
from pathlib import Path
script = Path(sys.argv[1])
sys.argv = sys.argv[1:]
sys.path[:0] = [str(script.parent), str(script.parent / "gguf-py")]
try:
    from conversion.base import TextModel
except ImportError:
    sys.exit("this llama.cpp converter has no conversion package (llama.cpp of 2026 or later has): it cannot "
             "convert a checkpoint without a tokenizer whose converter needs a BPE tokenizer")
TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
runpy.run_path(str(script), run_name="__main__")
"""

# converters that also export multi-token-prediction heads ask for them unless told not to; the zoo's import
# leaves such heads out, so the GGUF does too
NO_MTP = ("Qwen3_5", "Qwen3Next")


def to_gguf(folder: Path, outtype: str, vocab_size: int, checkout: str | None) -> tuple[Path, str]:
    """The checkpoint as GGUF at `outtype`, converted once and cached by the folder's files (name, size, mtime);
    returns (path, note), the note saying when a placeholder vocabulary was used."""
    if outtype not in OUTTYPES:
        raise ZooError(f"bench.llamacpp has unknown type {outtype!r}; valid: {', '.join(OUTTYPES)}")
    folder = folder.resolve()
    stamp = hashlib.sha256(str(folder).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            stamp.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = CACHE / "gguf" / f"{folder.name}-{stamp.hexdigest()[:16]}-{outtype}.gguf"
    has_tokenizer = any((folder / name).is_file() for name in TOKENIZER_FILES)
    note = "" if has_tokenizer else "placeholder vocabulary (the checkpoint has no tokenizer)"
    if out.is_file():
        return out, note
    out.parent.mkdir(parents=True, exist_ok=True)
    script = converter(checkout)
    with tempfile.TemporaryDirectory() as tmp:
        source = folder
        if not has_tokenizer:  # the checkpoint's files, linked, beside a placeholder vocabulary
            source = Path(tmp) / folder.name
            source.mkdir()
            for f in folder.iterdir():
                (source / f.name).symlink_to(f)
            placeholder_tokenizer(source, vocab_size)
            placeholder_bpe(source, vocab_size)
        partial = out.with_suffix(".partial")
        run = [sys.executable, str(script)] if has_tokenizer else [sys.executable, "-c", _PLACEHOLDER_RUN, str(script)]
        cmd = [*run, str(source), "--outtype", outtype, "--outfile", str(partial)]
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or [""]
        if archs[0].startswith(NO_MTP):
            cmd.append("--no-mtp")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise ZooError(f"llama.cpp's converter failed on {folder} at {outtype}:\n{tail}")
        partial.rename(out)
    return out, note


class WorkerCrash(RuntimeError):
    """The llama.cpp process died of a signal (returncode < 0), not of a Python error."""


def time_gguf(
    gguf: Path,
    ids: torch.Tensor,
    gen: int,
    prefill_chunk: int,
    flash_attn: bool,
    logits=False,
    extra_bufts=True,
    kv_f32=False,
) -> dict:
    """One cell in a fresh process (`llamacpp_worker.py`) with this process's thread count; `kv_f32` keeps the KV
    cache in f32 (llama.cpp's default, which zoo-bench measures, is f16)."""
    request = {
        "gguf": str(gguf),
        "ids": ids.flatten().tolist(),
        "gen": gen,
        "threads": torch.get_num_threads(),
        "prefill_chunk": prefill_chunk,
        "flash_attn": flash_attn,
        "logits": logits,
        "extra_bufts": extra_bufts,
        "kv_f32": kv_f32,
    }
    done = subprocess.run([sys.executable, str(WORKER)], input=json.dumps(request), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        error = WorkerCrash if done.returncode < 0 else RuntimeError
        raise error(f"llama.cpp worker failed (exit {done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class LlamaCppRunner:
    """A checkpoint in llama.cpp at one weight type: converted to GGUF, each cell timed in a process of its own.
    The zoo's model of the same config, built on the meta device (no memory), gives the parameter counts and the
    cache size the budget refuses lengths by (llama.cpp's f16 KV cache is half of it: the budget is cautious)."""

    def __init__(self, folder: str, outtype: str, flash_attn: bool, cfg, checkout: str | None):
        from zoo.io.hf import read_hf_config
        from zoo.model.lm import HybridLM

        arch, hf_cfg = read_hf_config(Path(folder))
        with torch.device("meta"):
            self.model = HybridLM(arch.zoo_config(hf_cfg))
        self.gguf, self.note = to_gguf(Path(folder), outtype, self.model.config.vocab_size, checkout)
        self.flash_attn, self.prefill_chunk = flash_attn, cfg.prefill_chunk
        self.params = self.model.num_params()
        self.weight_bytes = self.gguf.stat().st_size  # what decode streams: the weights as llama.cpp stores them
        head = 0 if self.model.config.tie_embeddings else self.model.config.vocab_size * self.model.config.d_model
        self.flop_params = self.params - self.model.embed.weight.numel() - head
        self.state_grows = self.model.state_grows
        self.extra_bufts = True

    def state_bytes(self, seq_len: int, batch_size: int = 1) -> int:
        return self.model.state_bytes(seq_len, batch_size)

    def time_cell(self, vocab: int, batch: int, length: int, gen: int, device, seed: int) -> dict:
        if batch != 1:
            raise ValueError("llama.cpp rows are measured at batch 1")
        g = torch.Generator().manual_seed(seed + length)  # the zoo's prompt ids of the same cell
        ids = torch.randint(0, vocab, (1, length), generator=g)
        try:
            cell = time_gguf(self.gguf, ids, gen, self.prefill_chunk, self.flash_attn, extra_bufts=self.extra_bufts)
        except WorkerCrash:
            if not self.extra_bufts:
                raise
            # llama-cpp-python 0.3.36 crashed (SIGSEGV) on q8_0 with its AMX / repacked buffers on an AVX-512 +
            # AMX Xeon; without them it runs. Measured so, and said so in the row.
            self.extra_bufts = False
            self.note = "; ".join(filter(None, [self.note, "extra buffer types (AMX, repack) off: they crashed"]))
            cell = time_gguf(self.gguf, ids, gen, self.prefill_chunk, self.flash_attn, extra_bufts=False)
        return {
            "prefill_s": cell["prefill_s"],
            "prefill_tok_s": length / cell["prefill_s"],
            "ttft_s": cell["prefill_s"],
            "decode_s": cell["decode_s"],
            "decode_tok_s": gen / cell["decode_s"],
            "peak_mib": cell["peak_mib"],
            "memory_method": "ru_maxrss (the llama.cpp process)",
            "cache_bytes": None,
            "note": self.note,  # with the fallback above, if this cell (or an earlier one) took it
        }


def job_names(folder: str, outtypes: list[str], flash_attn: list[bool], has_attention: bool) -> list[str]:
    """`llama.cpp:<outtype>[+fa]:<folder>` for each weight type and flash-attention setting (only off for a
    model without attention layers, where the switch changes nothing)."""
    names = []
    for outtype in outtypes:
        for fa in flash_attn if has_attention else [False]:
            names.append(f"{PREFIX}{outtype}{'+fa' if fa else ''}:{folder}")
    return names


def parse_job(name: str) -> tuple[str, bool, str]:
    """(outtype, flash_attn, folder) of a job name from `job_names`."""
    kind, _, folder = name.removeprefix(PREFIX).partition(":")
    return kind.removesuffix("+fa"), kind.endswith("+fa"), folder
