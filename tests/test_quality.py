"""Correctness vs quality, calibrated on a model trained for real (tests/trained_model.py).

- the trained model's next-token distributions are peaked, unlike random-weight models';
- its Q8_0 files pass the default run at several group sizes, with perplexity in the verify JSON;
- a layout error (swapped layers, q and k exchanged) fails as a correctness failure, even where
  its quality numbers would stay within the limits;
- quality limits warn by default and fail only under a gate (CLI and pipeline), in one line;
- evaluation tokens: made once (eval-tokens), reused by verify, from text, from id files, refused
  when hostile; logits are compared in blocks, so the vocabulary does not set the memory.
"""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
from conftest import assert_refused, snakemake, workflow_copy
from helpers import run_cli, save_llama2c
from hostile_harness import HostileCase, run_hostile

torch = pytest.importorskip("torch")

import trained_model  # noqa: E402

from llama2bin.checks.eval_tokens import random_tokens, sampled_tokens  # noqa: E402
from llama2bin.checks.forward import logits  # noqa: E402
from llama2bin.checks.functional import QualityLimits, ReferenceModel, functional_check  # noqa: E402
from llama2bin.checks.weights import SourceWeights  # noqa: E402
from llama2bin.formats.families import open_output  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.formats.writer import export  # noqa: E402
from llama2bin.model import LAYER_TENSORS  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> str:
    """The trained checkpoint, trained once per test session (~300 steps, seconds on one core)."""
    path = str(tmp_path_factory.mktemp("trained") / "trained.pt")
    trained_model.train(path)
    return path


def _mean_max_prob(ckpt: str, tokens) -> float:  # type: ignore[no-untyped-def]
    with open_source("llama2c", ckpt) as src:
        out = logits(SourceWeights(src), src.config, np.array(tokens.sequences)).astype(np.float64)
    p = np.exp(out - out.max(-1, keepdims=True))
    return float((p / p.sum(-1, keepdims=True)).max(-1).mean())


@pytest.mark.slow
def test_the_trained_model_is_peaked_and_random_ones_are_not(trained, tmp_path):
    with open_source("llama2c", trained) as src:
        tokens = sampled_tokens(src, 8, 32)
    # it learned the grammar: the pronoun follows the name in what it generates
    words = [trained_model.WORDS[i] for i in tokens.sequences[0]]
    for i, w in enumerate(words[:-6]):
        if w in trained_model.NAMES and words[i + 4 : i + 6] == [".", "then"]:
            assert words[i + 6] == trained_model.NAMES[w]
    assert _mean_max_prob(trained, tokens) > 0.5
    # the same architecture with random weights (norms 1): nearly flat, even on its own samples
    ckpt = torch.load(trained, weights_only=True)
    rng = np.random.default_rng(0)
    flat = {k: (0.02 * rng.standard_normal(tuple(v.shape)) if v.dim() == 2 else np.ones(tuple(v.shape))).astype(np.float32)
            for k, v in ckpt["model"].items()}
    flat["output.weight"] = flat["tok_embeddings.weight"]
    args = ckpt["model_args"]
    random_ckpt = save_llama2c(str(tmp_path / "random.pt"), flat, args)
    with open_source("llama2c", random_ckpt) as src:
        assert _mean_max_prob(random_ckpt, sampled_tokens(src, 8, 32)) < 0.1  # ~1/64: flat


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [16, 64])
def test_q8_0_of_the_trained_model_passes_by_default(trained, tmp_path, group_size):
    bins = [str(tmp_path / f"t.v{v}.bin") for v in (0, 2)]
    assert run_cli("export", *bins, "--checkpoint", trained, "--version", "0", "2", "--group-size", str(group_size),
                   "--quiet").returncode == 0
    jsons = [str(tmp_path / f"t.v{v}.json") for v in (0, 2)]
    proc = run_cli("verify", *bins, "--checkpoint", trained, "--json", *jsons, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and "PPL" in proc.stdout
    v0, v2 = (json.load(open(p)) for p in jsons)
    assert v0["passed"] and v0["functional"]["delta_ppl"] == 0 and v0["functional"]["kld_max"] == 0
    f = v2["functional"]
    assert v2["correct"] and v2["passed"] and not v2["quality"]["exceeded"] and v2["group_size"] == group_size
    assert f["quantized"] and 1 < f["ppl_source"] < 4  # the grammar's floor is e^0.67 ~ 2
    assert abs(f["ppl_ratio"] - 1) < 0.01 and f["kld_mean"] < QualityLimits().kld_mean_max / 100
    assert f["eval"]["recipe"]["kind"] == "sampled" and f["predicted"] == 8 * 31


def _swap(src: str, dst: str, pairs: list[tuple[str, str]]) -> str:
    from test_functional import _swap_sections

    return _swap_sections(src, dst, pairs)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["swapped layers", "q and k"])
def test_layout_errors_of_the_trained_model_fail_as_correctness(trained, tmp_path, damage):
    good = str(tmp_path / "t.v2.bin")
    with open_source("llama2c", trained) as src:
        export(src, [("2", good)], quiet=True)
    pairs = ([(f"layers.0.{k}", f"layers.1.{k}") for k in LAYER_TENSORS] if damage == "swapped layers"
             else [("layers.1.attention.wq", "layers.1.attention.wk")])
    bad = _swap(good, str(tmp_path / "bad.bin"), pairs)
    out = str(tmp_path / "bad.json")
    proc = run_cli("verify", bad, "--checkpoint", trained, "--json", out, "--quiet")
    assert proc.returncode == 1
    result = json.load(open(out))
    assert not result["correct"] and result["tensor_failures"]
    assert all(f"FAILED: {f}" in proc.stderr for f in result["failures"])
    assert result["functional"]["kld_mean"] > 1e-3  # the damage shows in the numbers too


@pytest.mark.slow
def test_quality_gate_fails_the_pipeline_with_a_one_line_reason(tmp_path):
    workdir = tmp_path / "w"
    workflow_copy(workdir)
    (workdir / "config.yaml").write_text(
        "models:\n  u: {source: llama2c, demo: untied, quality: {gate: true, kld_mean_max: 1.0e-12}}\n"
        "versions: [2]\nfunctional: {eval_seqs: 2, eval_len: 8}\nc_check: {enabled: false}\n")
    run = snakemake(workdir, "results/u/u.v2.verify.json", cores=1)
    assert run.returncode != 0
    reasons = [line for line in run.stderr.splitlines() if line.startswith("llama2bin: error:")]
    assert len(reasons) == 1 and "quality gate: mean KLD" in reasons[0] and "1e-12" in reasons[0], run.stderr[-3000:]
    # the verify job made the evaluation tokens; a failed job's outputs go with it, tokens included
    assert not (workdir / "results/u/eval_tokens.json").exists()
    assert not (workdir / "results/u/u.v2.verify.json").exists()


def test_eval_tokens_are_made_once_and_reused(trained, tmp_path):
    bin_path = str(tmp_path / "t.v2.bin")
    with open_source("llama2c", trained) as src:
        export(src, [("2", bin_path)], quiet=True)
    toks = str(tmp_path / "toks.json")
    made = run_cli("eval-tokens", toks, "--checkpoint", trained, "--eval-seqs", "3", "--eval-len", "12", "--quiet")
    assert made.returncode == 0, made.stderr
    d = json.load(open(toks))
    assert d["recipe"] == {"kind": "sampled", "seqs": 3, "len": 12, "seed": 0, "temperature": 1.0, "top_p": 0.9, "bos": 1}
    assert len(d["sequences"]) == 3 and all(len(s) == 12 and s[0] == 1 for s in d["sequences"])
    out = str(tmp_path / "v.json")
    assert run_cli("verify", bin_path, "--checkpoint", trained, "--eval-tokens", toks, "--json", out,
                   "--quiet").returncode == 0
    ev = json.load(open(out))["functional"]["eval"]
    assert ev["sha256"] == d["sha256"] and ev["positions"] == 36
    # ids given directly, one sequence per line; ragged lengths are fine
    (tmp_path / "ids.txt").write_text("1 9 20 3\n\n1 10 21 3 40 4\n")
    assert run_cli("verify", bin_path, "--checkpoint", trained, "--eval-tokens", str(tmp_path / "ids.txt"), "--json",
                   out, "--quiet").returncode == 0
    f = json.load(open(out))["functional"]
    assert f["positions"] == 10 and f["predicted"] == 8 and f["eval"]["recipe"]["kind"] == "file"
    # the pipeline's eval_tokens rule records a model's own id file the same way
    recorded = str(tmp_path / "recorded.json")
    assert run_cli("eval-tokens", recorded, "--checkpoint", trained, "--eval-tokens", str(tmp_path / "ids.txt"),
                   "--quiet").returncode == 0
    r = json.load(open(recorded))
    assert r["sequences"] == [[1, 9, 20, 3], [1, 10, 21, 3, 40, 4]] and r["sha256"] == f["eval"]["sha256"]
    assert r["recipe"]["file"] == "ids.txt" and len(r["recipe"]["file_sha256"]) == 64


def test_eval_text_is_tokenized_with_the_models_tokenizer(trained, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    text = " ".join(trained_model.WORDS[i] for i in trained_model.corpus(3000) if i > 2)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.split(" . ")), model_writer=buf, vocab_size=48,
                                   model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2)
    (tmp_path / "tok.model").write_bytes(buf.getvalue())
    (tmp_path / "eval.txt").write_text(text[:2000])
    toks = str(tmp_path / "toks.json")
    proc = run_cli("eval-tokens", toks, "--checkpoint", trained, "--eval-text", str(tmp_path / "eval.txt"),
                   "--tokenizer", str(tmp_path / "tok.model"), "--eval-seqs", "2", "--eval-len", "16")
    assert proc.returncode == 0, proc.stderr
    d = json.load(open(toks))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    want = sp.encode(text[:2000])
    assert d["sequences"] == [[sp.bos_id(), *want[:15]], [sp.bos_id(), *want[15:30]]]
    assert d["recipe"]["kind"] == "text" and d["recipe"]["file"] == "eval.txt"


@pytest.mark.parametrize("content, needle", [
    ("1 2 64\n", "token id 64 outside the vocabulary of 64"),
    ("1 two 3\n", "line 1 is not whitespace-separated integer token ids"),
    ('[[1, 2], "x"]', "sequence 1 is not a non-empty list"),
    ('{"sequences": [[1, 2]], "sha256": "00"}', "does not match its sequences"),
    ("[[1, 2], [1, NaN]]", "not valid JSON"),
    (" ".join(["1"] * 40) + "\n", "more than 32"),
])
def test_hostile_token_files_are_refused_in_one_line(trained, tmp_path, content, needle):
    bad = tmp_path / "ids.txt"
    bad.write_text(content)
    good = str(tmp_path / "t.v2.bin")
    with open_source("llama2c", trained) as src:
        export(src, [("2", good)], quiet=True)
    out = str(tmp_path / "v.json")
    run_hostile(HostileCase("token file", ["verify", good, "--checkpoint", trained, "--eval-tokens", str(bad),
                                           "--json", out, "--quiet"], inputs=[str(bad), good, trained], outputs=[out],
                            needle=needle))


def test_evaluation_size_is_capped(trained):
    assert_refused(run_cli("eval-tokens", "x.json", "--checkpoint", trained, "--eval-seqs", "1000", "--eval-len", "1000"),
                          "tokens is more than 16384")


def test_logit_memory_does_not_grow_with_the_vocabulary(tmp_path, monkeypatch):
    """vocab 2^18, dim 2: the logits of 64 positions would be 64 MiB as float32 and 128 MiB per
    float64 temporary (~6 of them alive in the comparison: ~800 MiB); compared in blocks of 2^20
    elements (8 MiB per float64 temporary) the whole check peaks below 64 MiB."""
    from llama2bin.checks import functional, metrics

    vocab, dim = 1 << 18, 2
    rng = np.random.default_rng(0)
    arrays = {"tok_embeddings.weight": rng.standard_normal((vocab, dim)).astype(np.float32),
              "norm.weight": np.ones(dim, np.float32)}
    for i in range(1):
        for k, shape in {"attention.wq": (dim, dim), "attention.wk": (dim, dim), "attention.wv": (dim, dim),
                         "attention.wo": (dim, dim), "feed_forward.w1": (32, dim), "feed_forward.w2": (dim, 32),
                         "feed_forward.w3": (32, dim)}.items():
            arrays[f"layers.{i}.{k}.weight"] = rng.standard_normal(shape).astype(np.float32)
        arrays[f"layers.{i}.attention_norm.weight"] = np.ones(dim, np.float32)
        arrays[f"layers.{i}.ffn_norm.weight"] = np.ones(dim, np.float32)
    arrays["output.weight"] = arrays["tok_embeddings.weight"]
    args = {"dim": dim, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "vocab_size": vocab, "multiple_of": 32,
            "max_seq_len": 16, "dropout": 0.0}
    ckpt = save_llama2c(str(tmp_path / "wide.pt"), arrays, args)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 1 << 20)
    monkeypatch.setattr(functional, "_CACHE_BYTES", 1 << 20)
    with open_source("llama2c", ckpt) as src:
        export(src, [("0", str(tmp_path / "wide.bin"))], quiet=True)
        reference = ReferenceModel(src, random_tokens(vocab, 16, 4, 16))
        with open_output(str(tmp_path / "wide.bin")) as output:
            tracemalloc.start()
            result = functional_check(output, reference)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert result.passed and result.positions == 64 and result.kld_max == 0
    assert peak < 64 << 20, peak


def test_verify_writes_the_same_eval_tokens_as_the_eval_tokens_command(trained, tmp_path):
    """The pipeline makes the tokens inside the verify job (--write-eval-tokens): the same bytes as
    `eval-tokens` with the same recipe, and the same verify result as reading them back."""
    bin_path = str(tmp_path / "t.v2.bin")
    with open_source("llama2c", trained) as src:
        export(src, [("2", bin_path)], quiet=True)
    recipe = ["--eval-seqs", "2", "--eval-len", "9", "--eval-seed", "3"]
    alone, inside = str(tmp_path / "alone.json"), str(tmp_path / "inside.json")
    assert run_cli("eval-tokens", alone, "--checkpoint", trained, *recipe, "--quiet").returncode == 0
    one, two = str(tmp_path / "one.json"), str(tmp_path / "two.json")
    made = run_cli("verify", bin_path, "--checkpoint", trained, *recipe, "--write-eval-tokens", inside,
                   "--json", one, "--quiet")
    assert made.returncode == 0, made.stderr
    assert open(inside, "rb").read() == open(alone, "rb").read()
    reread = run_cli("verify", bin_path, "--checkpoint", trained, "--eval-tokens", alone, "--json", two, "--quiet")
    assert reread.returncode == 0, reread.stderr
    assert open(one, "rb").read() == open(two, "rb").read()
    assert_refused(run_cli("verify", bin_path, "--checkpoint", trained, "--no-functional", "--write-eval-tokens",
                           str(tmp_path / "x.json")), "--write-eval-tokens")


def test_outputs_with_the_same_weights_share_one_functional_check(trained, tmp_path, monkeypatch):
    """v1 and v2 hold the same Q8_0 q and scales (one weights fingerprint): verify computes their
    functional check once, and the result is the one each gets alone, byte for byte."""
    from llama2bin.checks import verification

    bins = {v: str(tmp_path / f"t.v{v}.bin") for v in ("0", "1", "2")}
    with open_source("llama2c", trained) as src:
        export(src, list((v, p) for v, p in bins.items()), quiet=True)
    tokens = ["--eval-seqs", "2", "--eval-len", "9"]
    alone = {}
    for v, path in bins.items():
        alone[v] = str(tmp_path / f"alone.v{v}.json")
        assert run_cli("verify", path, "--checkpoint", trained, *tokens, "--json", alone[v], "--quiet").returncode == 0
    calls = []
    real = verification.functional_check
    monkeypatch.setattr(verification, "functional_check", lambda output, *a, **k: calls.append(output.path) or
                        real(output, *a, **k))
    from llama2bin.cli import main

    together = [str(tmp_path / f"together.v{v}.json") for v in bins]
    assert main(["verify", *bins.values(), "--checkpoint", trained, *tokens, "--json", *together, "--quiet"]) == 0
    assert calls == [bins["0"], bins["1"]]  # v2's weights are v1's: served from the memo
    for v, path in zip(bins, together, strict=True):
        assert open(path, "rb").read() == open(alone[v], "rb").read()
    assert json.load(open(alone["1"]))["weights_sha256"] == json.load(open(alone["2"]))["weights_sha256"]
