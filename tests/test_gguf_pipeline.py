"""GGUF in the pipeline: config `versions:` takes the GGUF types (results/NAME/NAME.<type>.gguf),
each verified (GGUFReader read-back, functional check, llama.cpp when installed) and reported;
config `source: gguf` reads a GGUF into any output."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import snakemake, workflow_copy
from gguf import GGUFReader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF = os.path.join(ROOT, "tests", "data", "gguf", "tiny_hf_gqa")
GOLDEN = os.path.join(ROOT, "tests", "data", "gguf", "tiny_hf_gqa.q8_0.gguf")


def _tensors(path: str) -> dict[str, bytes]:
    return {t.name: t.data.tobytes() for t in GGUFReader(path).tensors}


@pytest.mark.slow  # two pipeline runs (~30 s)
def test_gguf_outputs_and_a_gguf_source_through_the_pipeline(tmp_path) -> None:
    hf = tmp_path / "hf"  # the converter's checkpoint without its tokenizer (GGUF: tokenizer.ggml.model "none")
    hf.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(HF, name), hf / name)
    workdir = workflow_copy(tmp_path / "w", {"models": {"tiny": {"source": "hf", "path": str(hf)}},
                                             "versions": [0, 2, "gguf-f16", "gguf-q8_0"]})
    proc = snakemake(workdir, "--configfile", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = os.path.join(workdir, "results")
    # the converter's tensors, bytes for bytes, through the pipeline's export
    assert _tensors(os.path.join(results, "tiny", "tiny.q8_0.gguf")) == _tensors(GOLDEN)
    name = GGUFReader(os.path.join(results, "tiny", "tiny.f16.gguf")).fields["general.name"]
    assert bytes(name.parts[name.data[0]]) == b"tiny"
    record = json.load(open(os.path.join(results, "tiny", "tiny.q8_0.verify.json")))
    assert record["format"] == "gguf-q8_0" and record["correct"] and record["functional"]["quantized"]
    summary = json.load(open(os.path.join(workdir, "reports", "summary.json")))["files"]
    assert [(r["version"], r["verified"]) for r in summary] == [(0, True), (2, True), ("gguf-f16", True),
                                                                ("gguf-q8_0", True)]
    # a Q8_0 GGUF (the converter's) as the source: v0 and F16 hold its dequantized values, recorded
    other = workflow_copy(tmp_path / "g", {"models": {"fromgguf": {"source": "gguf", "path": GOLDEN}},
                                           "versions": [0, "gguf-f16"]})
    proc = snakemake(other, "--configfile", "c.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.load(open(os.path.join(other, "results", "fromgguf", "fromgguf.f16.verify.json")))
    assert record["correct"] and record["source_quantized"] == {"format": "gguf-q8_0", "group_size": 32}
