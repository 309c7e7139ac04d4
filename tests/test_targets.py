"""Targets: the programs that read our files, as data (formats/targets.py).

Fast checks of the registry and of the model-vs-program check; the trained-model checks (C
consumer in each program's arithmetic against transformers' greedy tokens) are in
test_targets_trained.py.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml
from helpers import DATA, ROOT
from llama_checkpoints import run

from llama2bin.errors import Llama2binError
from llama2bin.formats import FORMATS
from llama2bin.formats.targets import (
    IMPLIED,
    KV_CACHE_WARN_BYTES,
    TARGETS,
    check_model,
    kv_cache_warning,
    target_spec,
    tokenizer_mismatch,
)
from llama2bin.model import ModelConfig
from llama2bin.rope_freqs import LLAMA3, RopeScaling

# Llama 3.2 1B's shape, as its config.json gives it (max_position_embeddings 131072).
LLAMA_3_2_1B = ModelConfig(dim=2048, hidden_dim=8192, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                           max_seq_len=131072, shared_classifier=True, norm_eps=1e-5, rope_theta=500000.0,
                           rope_scaling=RopeScaling(LLAMA3, 32.0, 1.0, 4.0, 8192), bos_id=128000,
                           eos_ids=(128001, 128008, 128009))
LLAMA_3_8B = dataclasses.replace(LLAMA_3_2_1B, dim=4096, hidden_dim=14336, n_layers=32, n_kv_heads=8,
                                 max_seq_len=8192, shared_classifier=False, rope_scaling=None)
STORIES15M = ModelConfig(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000,
                         max_seq_len=256, shared_classifier=True)
SCALING_32 = "rope_scaling llama3 (factor 32, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192)"


def test_the_schemas_targets_enum_is_the_target_registry():
    with open(os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml")) as f:
        schema = yaml.safe_load(f)
    assert schema["properties"]["targets"]["items"]["enum"] == list(TARGETS)


def test_every_available_target_reads_a_registered_format_and_version_alone_means_run_c_and_runq_c():
    assert {"run.c", "runq.c", "llama3.c", "llama3.c-runq", "tables", "llama.cpp"} <= set(TARGETS)
    for t in TARGETS.values():
        assert t.available == (t.format in FORMATS)
        assert t.activations in ("f32", "q8")
        if t.available:
            if FORMATS[t.format].family.c_consumer:  # llama2.c's programs: q8 exactly for its Q8_0 layouts
                assert (t.activations == "q8") == FORMATS[t.format].quantized
    assert all(TARGETS[n].available for n in ("run.c", "runq.c", "llama3.c", "llama3.c-runq", "tables"))
    assert {v: TARGETS[t].format for v, t in IMPLIED.items()} == {"0": "0", "2": "2"}
    # the ports that read the tables are listed by name (READERS.md)
    assert "tairov/llama2.mojo" in TARGETS["tables"].ports and "gaxler/llama2.rs" in TARGETS["tables"].ports
    if not TARGETS["llama.cpp"].available:
        with pytest.raises(Llama2binError, match="llama.cpp: it reads gguf"):
            target_spec("llama.cpp")


def test_llama3_c_refuses_rope_scaling_in_one_line_naming_both():
    with pytest.raises(Llama2binError) as e:
        check_model(TARGETS["llama3.c"], LLAMA_3_2_1B, allow_rope=False, where="Llama-3.2-1B")
    assert str(e.value).startswith(f"Llama-3.2-1B: llama3.c computes RoPE at 500000 without scaling; this model uses "
                                   f"{SCALING_32}; pass --allow-rope-theta")
    assert "\n" not in str(e.value)
    # consent: the departure is recorded, word for word
    check = check_model(TARGETS["llama3.c-runq"], LLAMA_3_2_1B, allow_rope=True)
    assert check.departures == (f"llama3.c-runq computes RoPE at 500000 without scaling; this model uses {SCALING_32}",)


def test_each_target_accepts_exactly_the_rope_it_computes():
    # Llama 3 8B (500000, unscaled): what llama3.c computes; run.c computes 10000
    assert check_model(TARGETS["llama3.c"], LLAMA_3_8B, False).departures == ()
    with pytest.raises(Llama2binError, match="run.c computes RoPE at 10000 without scaling; this model uses "
                                             "rope_theta 500000"):
        check_model(TARGETS["run.c"], LLAMA_3_8B, False)
    # stories15M (10000): llama3.c would get it wrong
    with pytest.raises(Llama2binError, match="llama3.c computes RoPE at 500000 without scaling; this model uses "
                                             "rope_theta 10000"):
        check_model(TARGETS["llama3.c"], STORIES15M, False)
    assert check_model(TARGETS["run.c"], STORIES15M, False).departures == ()
    # tables carry any base and scaling
    for cfg in (LLAMA_3_2_1B, LLAMA_3_8B, STORIES15M):
        assert check_model(TARGETS["tables"], cfg, False).departures == ()
    # one of the table ports has no grouped-query attention (tairov/llama2.py reads wk as dim x dim)
    assert check_model(TARGETS["tables"], LLAMA_3_8B, False).warnings == (
        "tairov/llama2.py of the tables ports cannot run grouped-query attention (32 heads, 8 kv heads)",)
    assert check_model(TARGETS["tables"], STORIES15M, False).warnings == ()


def test_hard_coded_bos_eos_and_eps_are_warned_and_recorded():
    check = check_model(TARGETS["run.c"], dataclasses.replace(STORIES15M, norm_eps=1e-6, bos_id=5, eos_ids=(6,)), False)
    assert check.departures == ("run.c normalizes with eps 1e-05; this model uses 1e-06",)
    assert check.warnings == ("run.c starts every prompt with BOS 1; this model's BOS is 5",
                              "run.c stops at 2; this model's EOS is 6")
    # Llama 3.2's EOS list includes 128001 and 128009: no warning
    assert check_model(TARGETS["llama3.c"], LLAMA_3_8B, False).warnings == ()


def test_kv_cache_warning_gives_the_size_and_the_max_seq_len_that_fixes_it():
    # 131072 x 16 layers x kv_dim 512 x 2 x 4 B = 8.6 GB (issue 19)
    assert TARGETS["llama3.c"].kv_cache_bytes(LLAMA_3_2_1B) == 131072 * 16 * 512 * 2 * 4
    w = kv_cache_warning(TARGETS["llama3.c"], LLAMA_3_2_1B)
    assert w == ("llama3.c allocates a 8.6 GB KV cache at start-up for seq_len 131072 (16 layers x kv_dim 512 x 2 x 4 "
                 "bytes); --max-seq-len 32768 brings it to 2.1 GB")
    fixed = dataclasses.replace(LLAMA_3_2_1B, max_seq_len=32768)
    assert TARGETS["llama3.c"].kv_cache_bytes(fixed) <= KV_CACHE_WARN_BYTES
    assert kv_cache_warning(TARGETS["llama3.c"], fixed) is None
    assert kv_cache_warning(TARGETS["llama3.c"], LLAMA_3_8B) is None  # 8192 positions: 2.1 GB, at the limit
    assert kv_cache_warning(TARGETS["run.c"], STORIES15M) is None
    assert w in check_model(TARGETS["llama3.c"], LLAMA_3_2_1B, True).warnings


def test_tokenizer_conventions():
    assert tokenizer_mismatch(TARGETS["llama3.c"], "tiktoken") is None
    assert tokenizer_mismatch(TARGETS["llama3.c"], "tokenizer.json") is None
    assert tokenizer_mismatch(TARGETS["run.c"], "sentencepiece") is None
    assert tokenizer_mismatch(TARGETS["tables"], "tiktoken") is None and tokenizer_mismatch(TARGETS["tables"],
                                                                                          "sentencepiece") is None
    assert "llama3.c reads the Llama 3 ports' tokenizer.bin" in tokenizer_mismatch(TARGETS["llama3.c"], "sentencepiece")
    assert "run.c reads llama2.c's tokenizer.bin" in tokenizer_mismatch(TARGETS["run.c"], "tiktoken")


def test_cli_target_and_version_are_exclusive_and_unknown_targets_are_named(tmp_path, capsys):
    ckpt = os.path.join(DATA, "tiny_a.pt")
    out = str(tmp_path / "m.v0.bin")
    rc, _, err = run(["export", out, "--checkpoint", ckpt, "--version", "0", "--target", "run.c"], capsys)
    assert rc == 1 and "give --target or --version, not both" in err
    rc, _, err = run(["export", "--checkpoint", ckpt, "--target", "llama3", out], capsys)
    assert rc == 1 and err.strip().splitlines() == [f"llama2bin: error: unknown target 'llama3' (known: {', '.join(TARGETS)})"]
    # a llama2.c checkpoint at 10000 is refused for llama3.c, written for run.c and tables
    rc, _, err = run(["export", "--checkpoint", ckpt, "--target", "llama3.c", out], capsys)
    assert rc == 1 and "llama3.c computes RoPE at 500000 without scaling; this model uses rope_theta 10000" in err
    assert not (tmp_path / "m.v0.bin").exists()
    rc, stdout, err = run(["export", "--checkpoint", ckpt, "--target", "run.c", "tables", out, "--quiet"], capsys)
    assert rc == 0, err
    assert f"{out}: for run.c, tables" in stdout
    with open(out, "rb") as f, open(os.path.join(DATA, "tiny_a.v0.bin"), "rb") as g:
        assert f.read() == g.read()  # a target picks the format; the bytes are v0's


@pytest.mark.parametrize("file,target,rope,arithmetic", [
    ("tiny_a.v0.bin", "llama3.c", "theta 500000", "f32"),
    ("tiny_a.v0.bin", "tables", "tables", "f32"),
    ("tiny_a.v2.bin", "llama3.c-runq", "theta 500000", "q8"),
])
def test_c_check_runs_the_targets_arithmetic_on_both_sides(consumer, file, target, rope, arithmetic):
    from llama2bin.checks.ccheck import ProgramRope, c_check

    path = os.path.join(DATA, file)
    result = c_check(path, consumer, target=TARGETS[target])
    assert result.passed, result.failures
    assert (result.target, result.rope, result.arithmetic) == (target, rope, arithmetic)
    # the C side really switched: at llama3.c's base its logits are not run.c's
    if rope != "tables":
        at_500000 = consumer.logits(path, result.tokens, arithmetic, rope=ProgramRope(500000.0))
        at_10000 = consumer.logits(path, result.tokens, arithmetic)
        assert abs(at_500000 - at_10000).max() > 1e-3
    with pytest.raises(Llama2binError, match="reads v"):
        c_check(path, consumer, target=TARGETS["runq.c" if file.endswith("v0.bin") else "run.c"])
