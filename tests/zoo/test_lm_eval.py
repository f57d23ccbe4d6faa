"""lm-eval integration: ZooLM scores exactly what a hand computation from the model's logits gives, the offline
tasks run through `lm_eval.simple_evaluate` and `python -m zoo.lm_eval`, a dataset that cannot be downloaded is
one line, and `zoo-eval` merges `lm_eval/<task>/<metric>` into results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

import zoo
from zoo.config import compose
from zoo.data.mqar import IGNORE_INDEX, mqar
from zoo.data.tokenizer import ByteTokenizer, IntTokenizer
from zoo.errors import ConfigError
from zoo.evals.lm_eval.adapter import ZooLM, register
from zoo.evals.lm_eval.run import flat_metrics
from zoo.evals.lm_eval.tasks import DATA_ENV, load, make_data, tasks_dir

ROOT = Path(__file__).resolve().parents[2]
EOS = ByteTokenizer.eos_token_id


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    """The offline tasks' JSONL files go to a temporary folder, never to ~/.cache."""
    path = tmp_path_factory.mktemp("lm_eval_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(path))
        yield path


def tiny(arch: str, tokenizer, seed: int = 0):
    """d_model 32, 2 layers; init_std 0.3 so that the logits are far from uniform (greedy tokens are clear)."""
    cfg = compose(
        [
            f"model={arch}",
            "model.d_model=32",
            "model.head_dim=8",
            "model.n_layers=2",
            "model.attn.layers=[]",
            f"data.vocab_size={tokenizer.vocab_size}",
            "model.init_std=0.3",
        ]
    )
    torch.manual_seed(seed)
    model = zoo.build_model(cfg.model).eval()
    model.tokenizer = tokenizer
    return model


def save_run(model, folder: Path, seq_len: int) -> Path:
    """A run folder as zoo-train leaves it: checkpoint/ and .hydra/config.yaml with the training seq_len."""
    model.save_pretrained(folder / "checkpoint")
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"data:\n  name: mqar\n  seq_len: {seq_len}\n")
    return folder


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@torch.no_grad()
def hand_loglikelihood(model, ctx: list[int], cont: list[int], max_length: int) -> tuple[float, bool]:
    seq = (ctx + cont)[-(max_length + 1) :]
    logp = model(torch.tensor([seq[:-1]])).logits[0].log_softmax(-1)
    rows = logp[len(seq) - 1 - len(cont) :]
    target = torch.tensor(cont)
    return rows.gather(-1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> list[int]:
    return model.generate(torch.tensor([ids]), n)[0, len(ids) :].tolist()


# -- loglikelihood -------------------------------------------------------------------------------------------------


def test_loglikelihood_equals_the_logits_of_one_plain_forward():
    model = tiny("gla", ByteTokenizer())
    tok = model.tokenizer
    # a continuation the model itself would produce: 2 greedy bytes that are plain ASCII (so text round-trips)
    prompt, own = next(
        (p, tok.decode(g))
        for p in (f"The sky is {i}" for i in range(64))
        if max(g := greedy(model, tok.encode(p), 2)) < 128
    )
    long_context = "Here we go. There and back again. " * 2  # 68 bytes: cut to fit max_length=24
    cases = [
        ("The sky is", " blue"),  # multi-token
        ("abc", "d"),  # single token
        (prompt, own),  # greedy by construction
        ("", "xy"),  # empty context: conditioned on eos
        (long_context, " again"),
        ("pass key ", "12345"),  # trailing space moves into the continuation
    ]
    lm = ZooLM.from_model(model, batch_size=4, max_length=24)  # batches of 4: rows of different lengths
    got = lm.loglikelihood(requests("loglikelihood", cases))
    for (ctx, cont), (logp, is_greedy) in zip(cases, got, strict=True):
        if not ctx:
            want = hand_loglikelihood(model, [EOS], tok.encode(cont), 24)
        else:
            stripped = ctx.rstrip()
            whole = tok.encode(ctx + cont)
            n = len(tok.encode(stripped))
            want = hand_loglikelihood(model, whole[:n], whole[n:], 24)
        assert logp == pytest.approx(want[0], abs=1e-4), (ctx, cont)
        assert is_greedy == want[1], (ctx, cont)
    assert got[2][1] is True
    assert not all(g for _, g in got)
    # the long context really was cut: scoring it whole gives another number
    full = hand_loglikelihood(model, tok.encode(long_context), tok.encode(" again"), 10_000)[0]
    assert abs(full - got[4][0]) > 1e-3
    # one request at a time gives the same numbers as padded batches
    single = ZooLM.from_model(model, batch_size=1, max_length=24).loglikelihood(requests("loglikelihood", cases))
    for (a, ga), (b, gb) in zip(got, single, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def test_loglikelihood_errors_are_clear():
    lm = ZooLM.from_model(tiny("gla", IntTokenizer(50)), max_length=16)
    with pytest.raises(ValueError, match="needs an eos token"):
        lm.loglikelihood(requests("loglikelihood", [("", " 3")]))
    with pytest.raises(ValueError, match="cannot encode the task's text"):
        lm.loglikelihood(requests("loglikelihood", [("The sky", " is")]))
    with pytest.raises(ValueError, match="does not fit max_length=16"):
        lm.loglikelihood(requests("loglikelihood", [("1", " " + " ".join(["2"] * 17))]))
    assert lm.loglikelihood(requests("loglikelihood", [("1 2", " 3 4")]))[0][0] < 0


# -- rolling loglikelihood -----------------------------------------------------------------------------------------


DOCS = ["def f(x):\n    return x + 1\n\nprint(f(41))\n", "short", "The grass is green. The sky is blue. The end."]


@torch.no_grad()
def full_forward_logprob(model, tokens: list[int]) -> float:
    logp = model(torch.tensor([[EOS, *tokens[:-1]]])).logits[0].log_softmax(-1)
    return logp.gather(-1, torch.tensor(tokens)[:, None]).sum().item()


def test_rolling_streams_a_linear_model_through_its_cache():
    model = tiny("gla", ByteTokenizer())
    lm = ZooLM.from_model(model, batch_size=2, max_length=8)  # 41 bytes: 6 windows
    assert lm.streams
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCS]))
    for doc, value in zip(DOCS, got, strict=True):
        assert value == pytest.approx(full_forward_logprob(model, list(doc.encode())), abs=1e-3)


def test_rolling_windows_for_attention_are_lm_evals_disjoint_windows():
    model = tiny("transformer", ByteTokenizer())
    L = 8
    lm = ZooLM.from_model(model, batch_size=3, max_length=L)
    assert not lm.streams  # full attention: its cache grows with the length
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(d,) for d in DOCS]))
    for doc, value in zip(DOCS, got, strict=True):
        t = list(doc.encode())
        want = 0.0
        for s in range(0, len(t), L):  # window: predict t[s : s + L], reading at most L tokens
            if s == 0:
                inputs, n = [EOS, *t[: min(L, len(t)) - 1]], min(L, len(t))
            elif s + L <= len(t):
                inputs, n = t[s - 1 : s + L - 1], L  # conditioned only on the token before the window
            else:
                inputs, n = t[len(t) - L - 1 : len(t) - 1], len(t) - s  # last one: full context, score the rest
            with torch.no_grad():
                logp = model(torch.tensor([inputs])).logits[0, -n:].log_softmax(-1)
            want += logp.gather(-1, torch.tensor(t[s : s + n])[:, None]).sum().item()
        assert value == pytest.approx(want, abs=1e-3)
    # the windows lose context: not the same as one full forward over the long document
    assert abs(got[0] - full_forward_logprob(model, list(DOCS[0].encode()))) > 1e-2


# -- generation ----------------------------------------------------------------------------------------------------


def test_generate_until_stops_at_the_stop_string_and_keeps_the_context_end():
    model = tiny("gla", ByteTokenizer())
    tok = model.tokenizer
    lm = ZooLM.from_model(model, batch_size=2, max_length=40)
    prompts = ["The grass is green. The sky is", "Here we go.", "x" * 60 + "The sun is"]
    free = lm.generate_until(requests("generate_until", [(p, {"until": [], "max_gen_toks": 10}) for p in prompts]))
    for p, text in zip(prompts, free, strict=True):
        ids = tok.encode(p)[-30:]  # max_length - max_gen_toks
        new = greedy(model, ids, 10)
        new = new[: new.index(EOS)] if EOS in new else new
        assert text == tok.decode(new)
    # stop at the first character that did not occur before it (so its first occurrence is known)
    at = next(i for i in range(1, len(free[0])) if free[0][i] not in free[0][:i])
    stop = free[0][at]
    cut = lm.generate_until(requests("generate_until", [(prompts[0], {"until": [stop, "never"], "max_gen_toks": 10})]))
    assert cut == [free[0][:at]]
    with pytest.raises(ValueError, match="not supported"):
        lm.generate_until(requests("generate_until", [(prompts[0], {"until": [], "num_beams": 4})]))


# -- offline tasks -------------------------------------------------------------------------------------------------


def test_make_data_is_deterministic_and_is_what_the_tasks_load(tmp_path, data_dir):
    first = make_data(tmp_path / "a")
    second = make_data(tmp_path / "b")
    assert {t for t, _, _ in first} == {"zoo_mqar", "zoo_passkey_1k", "zoo_passkey_4k", "zoo_ppl"}
    for (_, a, n), (_, b, _) in zip(first, second, strict=True):
        assert n > 0 and a.read_bytes() == b.read_bytes()
    mqar_file = next(p for t, p, _ in first if t == "zoo_mqar")
    docs = load("mqar", vocab_size=256, seq_len=64, num_kv_pairs=4, num_examples=256, seed=1234, pretrained="x")
    assert (data_dir / mqar_file.name).exists()  # the loader wrote the same file into its own folder
    assert len(docs["test"]) == 256 * 4
    # each document: the sequence up to and including a query key, and that key's value
    x, y = mqar(256, 64, 4, 256, seed=1234)
    first_doc = docs["test"][0]
    p = first_doc["position"]
    assert first_doc["context"] == " ".join(map(str, x[0, : p + 1].tolist()))
    assert int(first_doc["target"]) == y[0, p] != IGNORE_INDEX
    with pytest.raises(ValueError, match="metadata"):
        load("mqar", vocab_size=256)


def test_simple_evaluate_runs_the_offline_tasks(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    register()  # lm-eval's registry knows the `zoo` model type only once it is registered
    # integer tokens: zoo_mqar; per-document log-likelihoods equal the logits at the query positions
    model = tiny("gla", IntTokenizer(256))
    model.save_pretrained(tmp_path / "int")
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model="zoo",
        model_args={"pretrained": str(tmp_path / "int"), "batch_size": 8},
        tasks=["zoo_mqar"],
        limit=12,
        task_manager=manager,
        log_samples=True,
    )
    x, y = mqar(256, 64, 4, 256, seed=1234)
    with torch.no_grad():
        logp = model(x[:3]).logits.log_softmax(-1)
    samples = out["samples"]["zoo_mqar"]
    assert len(samples) == 12
    hits = []
    for s in samples:
        i, p = s["doc"]["example"], s["doc"]["position"]
        (ll, is_greedy) = s["resps"][0][0]
        assert ll == pytest.approx(logp[i, p, y[i, p]].item(), abs=1e-4)
        hits.append(logp[i, p].argmax().item() == y[i, p])
    assert out["results"]["zoo_mqar"]["acc,none"] == pytest.approx(sum(hits) / len(hits))

    # byte tokens: the whole group (passkey at 1k and 4k, perplexity on a small corpus)
    byte_model = tiny("gla", ByteTokenizer())
    byte_model.save_pretrained(tmp_path / "byte")
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata={"text_max_bytes": 60_000})
    out = lm_eval.simple_evaluate(
        model="zoo",
        model_args=f"pretrained={tmp_path / 'byte'},max_length=4200",
        tasks=["zoo_offline"],
        limit=2,
        task_manager=manager,
        log_samples=True,
    )
    res = out["results"]
    assert 0.0 <= res["zoo_passkey_1k"]["exact_match,none"] <= 1.0
    assert 0.0 <= res["zoo_passkey_4k"]["exact_match,none"] <= 1.0
    assert res["zoo_ppl"]["byte_perplexity,none"] > 1.0 and res["zoo_ppl"]["bits_per_byte,none"] > 0
    sample = out["samples"]["zoo_passkey_1k"][0]
    prompt = sample["doc"]["context"]
    assert len(prompt) == 1024 and prompt.endswith("The pass key is ")
    want = ByteTokenizer().decode(greedy(byte_model, list(prompt.encode()), 5)).split(".")[0]
    assert sample["resps"][0][0] == want


def test_model_args_win_over_lm_evals_flags(tmp_path):
    model = tiny("gla", IntTokenizer(64))
    run = save_run(model, tmp_path / "run", seq_len=48)
    lm = ZooLM.create_from_arg_string(f"pretrained={run},batch_size=3", {"batch_size": 1, "max_batch_size": None})
    assert lm.batch_size == 3 and lm.max_length == 48  # the run's training seq_len
    assert ZooLM(pretrained=str(run / "checkpoint"), max_length="100").max_length == 100
    with pytest.raises(ValueError, match="batch_size=auto"):
        ZooLM(pretrained=str(run), batch_size="auto")
    with pytest.raises(ValueError, match="dtype"):
        ZooLM(pretrained=str(run), dtype="int8")


# -- command line --------------------------------------------------------------------------------------------------


def run_cli(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "zoo.lm_eval", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_runs_offline_and_user_tasks(tmp_path, data_dir):
    run = save_run(tiny("gla", IntTokenizer(256)), tmp_path / "run", seq_len=64)
    mine = tmp_path / "my_tasks"
    mine.mkdir()
    rows = [{"context": "3 200 5 201 3", "target": " 200"}, {"context": "7 130 7", "target": " 130"}]
    (mine / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (mine / "my_recall.yaml").write_text(
        "task: my_recall\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {mine / 'docs.jsonl'}\n"
        "output_type: loglikelihood\ntest_split: test\ndoc_to_text: context\ndoc_to_target: target\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n"
    )
    proc = run_cli(
        [
            "run",
            "--model",
            "zoo",
            "--model_args",
            f"pretrained={run}",
            "--tasks",
            "zoo_mqar,my_recall",
            "--include_path",
            str(mine),
            "--limit",
            "4",
            "--output_path",
            str(tmp_path / "out"),
        ],
        tmp_path,
        **{DATA_ENV: str(data_dir)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert any("zoo_mqar" in line and "acc" in line for line in table), proc.stdout
    assert any("my_recall" in line and "acc" in line for line in table), proc.stdout
    (results,) = (tmp_path / "out").rglob("results_*.json")
    config = json.loads(results.read_text())["config"]
    assert config["max_length"] == 64 and config["model"] == "zoo"


def test_cli_says_in_one_line_when_a_dataset_cannot_be_downloaded(tmp_path):
    tiny("gla", ByteTokenizer()).save_pretrained(tmp_path / "ckpt")
    proc = run_cli(
        [
            "run",
            "--model",
            "zoo",
            "--model_args",
            f"pretrained={tmp_path / 'ckpt'}",
            "--tasks",
            "lambada_openai",
            "--limit",
            "1",
        ],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("zoo.lm_eval: error: a task's dataset could not be downloaded")
    assert "zoo_mqar" in last and "zoo_ppl" in last


# -- zoo-eval ------------------------------------------------------------------------------------------------------


def test_flat_metrics_names():
    results = {
        "results": {
            "t": {
                "alias": "t",
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "ppl_stderr,none": "N/A",
                "exact_match,strict-match": 1.0,
            }
        }
    }
    assert flat_metrics(results) == {
        "lm_eval/t/acc": 0.5,
        "lm_eval/t/acc_stderr": 0.1,
        "lm_eval/t/exact_match@strict-match": 1.0,
    }


def zoo_eval_cfg(run: Path, *overrides: str):
    return compose(
        [
            f"path={run}",
            "eval.recall.mqar.seq_lens=[64]",
            "eval.recall.mqar.num_kv_pairs=[4]",
            "eval.recall.mqar.num_examples=8",
            "eval.recall.device=cpu",
            *overrides,
        ],
        config_name="zoo_eval",
    )


def test_zoo_eval_merges_lm_eval_metrics_into_results_json(tmp_path):
    from zoo.evals.cli import run as zoo_eval

    run = save_run(tiny("gla", IntTokenizer(256)), tmp_path / "run", seq_len=64)
    (run / "results.json").write_text(json.dumps({"metrics": {"val/loss": 1.5}}))
    metrics, _ = zoo_eval(zoo_eval_cfg(run, "tasks=[]", "lm_tasks=[zoo_mqar]", "eval.lm_eval.limit=8"))
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["val/loss"] == 1.5
    assert results["metrics"]["lm_eval/zoo_mqar/acc"] == metrics["lm_eval/zoo_mqar/acc"]
    assert "lm_eval/zoo_mqar/acc_stderr" in results["metrics"]
    assert not any("," in k or k.startswith("mqar/") for k in results["metrics"])  # tasks=[]: no recall suite
    assert results["lm_eval"]["config"]["max_length"] == 64 and results["lm_eval"]["n-samples"]["zoo_mqar"]
    assert not (run / "recall.csv").exists()
    # the recall suite still runs next to lm-eval
    metrics, _ = zoo_eval(zoo_eval_cfg(run, "tasks=[mqar]", "lm_tasks=[zoo_mqar]", "eval.lm_eval.limit=4"))
    results = json.loads((run / "results.json").read_text())
    assert "mqar/accuracy@64x4" in results["metrics"] and "lm_eval/zoo_mqar/acc" in results["metrics"]
    assert (run / "recall.csv").exists()


def test_zoo_eval_reports_a_failed_download_in_one_line(tmp_path, monkeypatch, capsys):
    from huggingface_hub.errors import OfflineModeIsEnabled

    import zoo.evals.lm_eval.run
    from zoo.evals.cli import _hydra_main

    def offline(*args, **kwargs):
        try:
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")
        except OfflineModeIsEnabled as e:
            raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub") from e

    monkeypatch.setattr(zoo.evals.lm_eval.run, "evaluate_model", offline)
    run = save_run(tiny("gla", IntTokenizer(256)), tmp_path / "run", seq_len=64)
    with pytest.raises(SystemExit) as exit_info:
        _hydra_main(zoo_eval_cfg(run, "tasks=[]", "lm_tasks=[lambada_openai]"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo-eval: error: a task's dataset could not be downloaded")
    assert "zoo_passkey_1k" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_an_explicit_cuda_device_without_cuda_is_an_error(tmp_path):
    run = save_run(tiny("gla", IntTokenizer(64)), tmp_path / "run", seq_len=48)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ZooLM.create_from_arg_string(f"pretrained={run}", {"device": "cuda:0"})


def test_wrapping_a_model_in_another_dtype_leaves_the_callers_model_alone():
    model = tiny("gla", IntTokenizer(64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lm = ZooLM.from_model(model, dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ZooLM.from_model(model).model is model  # nothing to convert: no copy
