"""Targets on two tiny models trained with transformers (tests/llama3_models.py): the file a target
picks, run by llama2bin's C consumer in that program's arithmetic, gives transformers' greedy tokens.

- llama3_shaped (rope_theta 500000, tied, GQA, explicit head_dim): `--target llama3.c` (v0, RoPE
  computed at 500000) and `--target llama3.c-runq` (v2, Q8_0 activations; the first 16 tokens).
- rope_scaled (llama3 rope scaling): `--target tables` (v0, RoPE read from the tables as the
  table-reading ports do); llama3.c's arithmetic on the same file visibly departs.
- Refusals: `--target llama3.c` refuses the scaled model in one line; with --allow-rope-theta the
  verify report shows each target's cost beside the quantization's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains two models (~10 s of CPU)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama3_models import MODELS, sample_tokens, train_hf, transformers_logits  # noqa: E402
from llama_checkpoints import run  # noqa: E402

from llama2bin.checks.ccheck import Consumer, ProgramRope  # noqa: E402

STEPS = 24
ATOL = 1e-4  # float32 logits of C and torch on the same weights: sums in another order


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets_trained")
    return {name: train_hf(name, str(root / name)) for name in MODELS}


def transformers_greedy(path: str, prompt: list[int], steps: int = STEPS) -> list[int]:
    """transformers' own greedy continuation (argmax of LlamaForCausalLM's logits, no EOS stop)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def c_greedy_agrees(consumer: Consumer, path: str, prompt: list[int], want: list[int], arithmetic: str,
                    rope: ProgramRope) -> list[int]:
    """The C consumer's argmax after the prompt and after each of `want`'s tokens (teacher forcing
    the greedy path: equal to `want` iff greedy decoding in C reproduces it token by token)."""
    logits = consumer.logits(path, prompt + want[:-1], arithmetic, rope=rope)
    return [int(i) for i in logits[len(prompt) - 1:].argmax(-1)]


def test_llama3_c_targets_give_transformers_greedy_tokens(trained, consumer, tmp_path, capsys):
    path = trained["llama3_shaped"]
    files = [str(tmp_path / "m.v0.bin"), str(tmp_path / "m.v2.bin")]
    rc, out, err = run(["export", "--hf", path, "--target", "llama3.c", "llama3.c-runq", *files, "--quiet"], capsys)
    assert rc == 0, err
    assert f"{files[0]}: for llama3.c\n" in out and f"{files[1]}: for llama3.c-runq\n" in out
    # the hard-coded BOS/EOS are warned about, not refused (the model's are 1 and 2/4)
    assert "llama2bin: warning: llama3.c starts every prompt with BOS 128000; this model's BOS is 1" in err
    # the same bytes --version 0 2 --allow-rope-theta wrote before targets existed
    rc, _, err = run(["export", str(tmp_path / "a.v0.bin"), str(tmp_path / "a.v2.bin"), "--hf", path, "--version", "0",
                      "2", "--allow-rope-theta", "--quiet"], capsys)
    assert rc == 0, err
    for name in ("v0", "v2"):
        assert (tmp_path / f"m.{name}.bin").read_bytes() == (tmp_path / f"a.{name}.bin").read_bytes()

    prompt = sample_tokens()[:4]
    want = transformers_greedy(path, prompt)
    assert len(set(want)) > 3  # a trained model: it follows the grammar, not one token
    llama3 = ProgramRope(500000.0)
    assert c_greedy_agrees(consumer, files[0], prompt, want, "f32", llama3) == want
    assert c_greedy_agrees(consumer, files[1], prompt, want[:16], "q8", llama3) == want[:16]
    # Greedy tokens of this grammar model survive even a wrong RoPE (they do at 10000 too), so the
    # logits decide: llama3.c's arithmetic gives transformers' to float32 rounding, run.c's does not.
    seq = prompt + want[:-1]
    hf = transformers_logits(path, seq)
    np.testing.assert_allclose(consumer.logits(files[0], seq, "f32", rope=llama3), hf, atol=ATOL, rtol=ATOL)
    assert np.abs(consumer.logits(files[0], seq, "f32", rope=ProgramRope(10000.0)) - hf).max() > 100 * ATOL


def test_tables_target_gives_transformers_greedy_tokens_on_a_rope_scaled_model(trained, consumer, tmp_path, capsys):
    path = trained["rope_scaled"]
    v0 = str(tmp_path / "s.v0.bin")
    rc, out, err = run(["export", "--hf", path, "--target", "llama3.c", v0, "--quiet"], capsys)
    assert rc == 1 and err.strip().splitlines()[-1] == (
        f"llama2bin: error: {path}: llama3.c computes RoPE at 500000 without scaling; this model uses rope_scaling "
        "llama3 (factor 8, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 48); pass "
        "--allow-rope-theta to write it anyway (verify then measures what the program's RoPE costs)")
    rc, out, err = run(["export", "--hf", path, "--target", "tables", v0, "--quiet"], capsys)
    assert rc == 0, err
    prompt = sample_tokens()[:4]
    want = transformers_greedy(path, prompt, steps=40)  # positions up to 43 of 64: the scaling matters there
    assert c_greedy_agrees(consumer, v0, prompt, want, "f32", ProgramRope(None)) == want
    seq = prompt + want[:-1]
    hf = transformers_logits(path, seq)
    np.testing.assert_allclose(consumer.logits(v0, seq, "f32", rope=ProgramRope(None)), hf, atol=ATOL, rtol=ATOL)
    # what llama3.c would compute instead: far from the model
    assert np.abs(consumer.logits(v0, seq, "f32", rope=ProgramRope(500000.0)) - hf).max() > 100 * ATOL


def test_report_shows_each_targets_cost(trained, tmp_path, capsys):
    """A Llama-3.2-shaped model (500000, llama3 scaling, tied, GQA) for llama3.c, llama3.c-runq
    and the table readers: the report puts each program's cost beside the quantization's."""
    path = trained["rope_scaled"]
    files = [str(tmp_path / "m.v0.bin"), str(tmp_path / "m.v2.bin")]
    targets = ["--target", "llama3.c", "llama3.c-runq", "tables"]
    rc, _, err = run(["export", "--hf", path, *targets, *files, "--allow-rope-theta", "--quiet"], capsys)
    assert rc == 0, err
    jsons = [str(tmp_path / "v0.json"), str(tmp_path / "v2.json")]
    rc, out, err = run(["verify", *files, "--hf", path, *targets, "--allow-rope-theta", "--quiet", "--eval-seqs", "4",
                        "--json", *jsons], capsys)
    assert rc == 0, out + err
    v0, v2 = (json.load(open(j)) for j in jsons)
    assert [t["name"] for t in v0["targets"]] == ["llama3.c", "tables"]
    assert [t["name"] for t in v2["targets"]] == ["llama3.c-runq"]
    by = {t["name"]: t for t in v0["targets"] + v2["targets"]}
    assert by["tables"]["departures"] == [] and by["tables"]["functional"]["kld_mean"] < 1e-9
    assert by["llama3.c"]["departures"][0].startswith("llama3.c computes RoPE at 500000 without scaling")
    assert by["llama3.c"]["functional"]["kld_mean"] > 1e-3 and by["llama3.c"]["functional"]["delta_ppl"] > 0
    assert by["llama3.c-runq"]["functional"]["arithmetic"] == "q8"
    # the runq program's cost includes the quantization's: more than the file's own (f32 activations)
    assert by["llama3.c-runq"]["functional"]["kld_mean"] > v2["functional"]["kld_mean"]
    rc, _, err = run(["report", *jsons, "--model", "scaled", "--out-dir", str(tmp_path / "rep"), "--no-plots"], capsys)
    assert rc == 0, err
    md = (tmp_path / "rep" / "v0.md").read_text() + (tmp_path / "rep" / "v2.md").read_text()
    for row in ("| this file (source's RoPE) |", "| llama3.c (the Llama 3 ports' run.c", "| tables (the v0 ports",
                "| llama3.c-runq (the Llama 3 ports' runq.c"):
        assert row in md
    html = (tmp_path / "rep" / "scaled.html").read_text()
    assert "llama3.c-runq (the Llama 3 ports" in html and "tables (the v0 ports" in html
    report = json.load(open(tmp_path / "rep" / "v2.json"))
    assert report["accepted_departures"] == [by["llama3.c-runq"]["departures"][0]]
