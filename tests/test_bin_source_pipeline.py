"""`source: bin` in the pipeline (issue 12.2): an existing .bin and its tokenizer.bin in, every default version out."""

import filecmp
import json
import os
import struct

import pytest
from conftest import snakemake, workflow_copy
from helpers import ROOT


@pytest.mark.slow
def test_bin_source_gives_every_default_version(tmp_path):
    workdir = workflow_copy(tmp_path / "w")
    src = os.path.join(ROOT, "tests", "data", "tiny_b.v0.bin")  # GQA, vocab 80, group size 8
    pieces = [f"p{i}".encode() for i in range(80)]
    tok = tmp_path / "tokenizer.bin"
    tok.write_bytes(struct.pack("<I", 3) + b"".join(struct.pack("<fI", 0.0, len(p)) + p for p in pieces))
    (tmp_path / "c.yaml").write_text(f"models: {{b: {{source: bin, path: '{src}', tokenizer: '{tok}'}}}}\n")
    proc = snakemake(workdir, "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = os.path.join(workdir, "results", "b")
    assert sorted(f for f in os.listdir(results) if f.endswith(".bin")) == ["b.v0.bin", "b.v2.bin", "tokenizer.bin"]
    for v in (0, 2):  # the default versions, each byte-identical to the seed's from the original checkpoint
        assert filecmp.cmp(os.path.join(results, f"b.v{v}.bin"), os.path.join(ROOT, f"tests/data/tiny_b.v{v}.bin"),
                           shallow=False)
    assert filecmp.cmp(os.path.join(results, "tokenizer.bin"), str(tok), shallow=False)
    summary = json.load(open(os.path.join(workdir, "reports/summary.json")))["files"]
    assert [(r["version"], r["verified"]) for r in summary] == [(0, True), (2, True)]
