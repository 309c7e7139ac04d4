"""The pipeline on Llama-3-style directories: an HF directory with a tokenizer.json and a Meta
directory with a tiktoken tokenizer.model each get results/NAME/tokenizer.bin with no tokenizer
configured, and evaluate on real text through that tokenizer."""

import filecmp
import json
import os
import shutil
import subprocess
import sys

import pytest
from bpe_vocab import tiktoken_text, tiny_merges, tiny_ranks, tokenizer_json, write_json
from helpers import ROOT, run_cli
from llama3_models import MODELS, meta_dir_from_hf

pytestmark = pytest.mark.slow  # runs Snakemake

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tiktoken")
pytest.importorskip("tokenizers")


def _random_hf(path: str, vocab_size: int, bos: int, eos: list[int]) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = {**MODELS["llama3_shaped"], "vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos}
    LlamaForCausalLM(LlamaConfig(**cfg)).eval().save_pretrained(path)
    return path


def test_llama3_directories_get_tokenizer_bin_and_text_evaluation(tmp_path):
    ranks = tiny_ranks()
    n = len(ranks)
    hf_dir = _random_hf(str(tmp_path / "hf3"), n + 2, n, [n + 1])
    write_json(os.path.join(hf_dir, "tokenizer.json"), tokenizer_json(ranks, tiny_merges(), ["<|begin_of_text|>",
                                                                                              "<|end_of_text|>"]))
    meta_src = _random_hf(str(tmp_path / "hf_for_meta"), n + 256, n, [n + 1])
    meta_dir = meta_dir_from_hf(meta_src, str(tmp_path / "meta3"), {
        "_model": "llama3_shaped", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": n + 256,
        "multiple_of": 32, "norm_eps": 1e-5, "rope_theta": 500000.0, "max_seq_len": 64})
    with open(os.path.join(meta_dir, "tokenizer.model"), "wb") as f:
        f.write(tiktoken_text(ranks))
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat and the dog ran in the park; then the cat ate. " * 20)

    workdir = tmp_path / "w"
    os.makedirs(workdir)
    for name in ("Snakefile", "config.yaml", "workflow"):
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(workdir, name))
    config = {"models": {
        "hf3": {"source": "hf", "path": hf_dir, "eval_text": str(text)},
        "meta3": {"source": "meta", "path": meta_dir, "eval_text": str(text)}},
        # rope_theta 500000 without scaling: what the Llama 3 ports and the table readers compute, no consent needed
        "targets": ["llama3.c-runq", "tables", "llama3.c"], "functional": {"eval_seqs": 2, "eval_len": 16}}
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(tmp_path / "c.yaml")],
                          cwd=workdir, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for model, tokenizer in (("hf3", os.path.join(hf_dir, "tokenizer.json")),
                             ("meta3", os.path.join(meta_dir, "tokenizer.model"))):
        want = tmp_path / f"{model}.tokenizer.bin"
        assert run_cli("tokenizer", tokenizer, str(want)).returncode == 0
        assert filecmp.cmp(workdir / "results" / model / "tokenizer.bin", want, shallow=False)
        recipe = json.load(open(workdir / "results" / model / "eval_tokens.json"))["recipe"]
        assert recipe["kind"] == "text"
        report = json.load(open(workdir / "reports" / model / f"{model}.v2.json"))
        assert report["verified"] and report["functional"]["eval"]["recipe"]["kind"] == "text"
        assert report["accepted_departures"] == []
        assert [t["name"] for t in report["targets"]] == ["llama3.c-runq"]
        assert report["targets"][0]["functional"]["arithmetic"] == "q8"
        v0 = json.load(open(workdir / "reports" / model / f"{model}.v0.json"))
        assert [t["name"] for t in v0["targets"]] == ["tables", "llama3.c"]
        assert all(t["functional"]["kld_mean"] < 1e-6 for t in v0["targets"])  # both compute the model's RoPE
        ccheck = json.load(open(workdir / "results" / model / f"{model}.v0.ccheck.json"))
        assert ccheck["passed"] and ccheck["target"] == "tables" and ccheck["rope"] == "tables"
    for model in ("hf3", "meta3"):  # the targets pick the formats: no other output
        assert sorted(os.listdir(workdir / "results" / model)) == sorted(
            [f"{model}.v0.bin", f"{model}.v2.bin", "eval_tokens.json", "tokenizer.bin", f"{model}.v0.verify.json",
             f"{model}.v2.verify.json", f"{model}.v0.ccheck.json", f"{model}.v2.ccheck.json"])
