"""Every golden file reproduced byte for byte, through the library and through the CLI."""

import hashlib
import os

import pytest
from helpers import DATA, run_cli

from llama2bin.formats.source_registry import open_source
from llama2bin.formats.writer import export

CASES = [(m, v) for m in ("tiny_a", "tiny_b") for v in (0, 1, 2)]


def test_golden_checksums_are_the_shipped_ones():
    """tests/data is a faithful copy of the golden set (guards against an edited fixture)."""
    for line in open(os.path.join(DATA, "SHA256SUMS")):
        digest, name = line.split()
        with open(os.path.join(DATA, name.lstrip("*")), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name


@pytest.mark.parametrize("model", ["tiny_a", "tiny_b"])
def test_all_versions_in_one_pass_match_golden(tmp_path, model):
    with open_source("llama2c", os.path.join(DATA, f"{model}.pt")) as src:
        export(src, [(v, str(tmp_path / f"{model}.v{v}.bin")) for v in (0, 1, 2)], quiet=True)
    for v in (0, 1, 2):
        got = (tmp_path / f"{model}.v{v}.bin").read_bytes()
        want = open(os.path.join(DATA, f"{model}.v{v}.bin"), "rb").read()
        assert got == want, f"{model} v{v}"


@pytest.mark.parametrize("model,version", CASES)
def test_cli_export_single_version_matches_golden(tmp_path, model, version):
    out = tmp_path / "out.bin"
    proc = run_cli("export", str(out), "--checkpoint", os.path.join(DATA, f"{model}.pt"), "--version", str(version))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == open(os.path.join(DATA, f"{model}.v{version}.bin"), "rb").read()
    if version:
        assert "max quantization group error across all weights" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]  # no temporary left behind


# ---- 1f: llama2.c's current `export.py --version 1` (float32, "ak42" header, no group size) ----

MASTER_V1 = [("tiny_a", "--checkpoint", "tiny_a.pt"), ("tiny_b", "--checkpoint", "tiny_b.pt"),
             ("tiny_hf_untied", "--hf", "tiny_hf_untied")]


@pytest.mark.parametrize("model,flag,source", MASTER_V1)
def test_cli_export_1f_matches_llama2c_master_v1(tmp_path, model, flag, source):
    out = tmp_path / f"{model}.v1f.bin"
    proc = run_cli("export", str(out), flag, os.path.join(DATA, source), "--version", "1f")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == open(os.path.join(DATA, f"{model}.master_v1.bin"), "rb").read()
    assert "max quantization group error" not in proc.stdout  # float32: nothing quantized
    assert sorted(os.listdir(tmp_path)) == [out.name]


def test_1f_in_one_pass_with_every_other_version(tmp_path):
    """1f shares the single pass over the source with the seed formats, all still byte-exact."""
    names = ["0", "1", "1f", "2"]
    with open_source("llama2c", os.path.join(DATA, "tiny_b.pt")) as src:
        export(src, [(v, str(tmp_path / f"v{v}.bin")) for v in names], quiet=True)
    for v in names:
        golden = "tiny_b.master_v1.bin" if v == "1f" else f"tiny_b.v{v}.bin"
        assert (tmp_path / f"v{v}.bin").read_bytes() == open(os.path.join(DATA, golden), "rb").read(), v
