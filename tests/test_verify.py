"""Round-trip verification: passes on good files, fails on any corruption, records statistics."""

import json
import os

import numpy as np
import pytest
from helpers import DATA, flipped_copy, run_cli

from llama2bin.checks.tensor import check_tensors
from llama2bin.formats.families import open_output
from llama2bin.formats.reader import BinFile
from llama2bin.formats.source_registry import open_source


@pytest.mark.parametrize("model", ["tiny_a", "tiny_b"])
def test_golden_files_verify_against_their_checkpoints(tmp_path, model):
    bins = [os.path.join(DATA, f"{model}.v{v}.bin") for v in (0, 1, 2)]
    jsons = [str(tmp_path / f"{v}.json") for v in (0, 1, 2)]
    proc = run_cli("verify", *bins, "--checkpoint", os.path.join(DATA, f"{model}.pt"), "--json", *jsons)
    assert proc.returncode == 0, proc.stderr
    results = [json.load(open(p)) for p in jsons]
    assert all(r["passed"] and not r["failures"] for r in results)
    v0, v1, v2 = results
    assert all(t["max_abs_err"] == 0 and t["snr_db"] is None for t in v0["tensors"])
    # v1 and v2 hold the same quantization, so the same errors
    assert [t["rel_err"] for t in v1["tensors"]] == [t["rel_err"] for t in v2["tensors"]]
    q = [t for t in v2["tensors"] if t["encoding"] == "q8_0"]
    assert q and all(0 < t["rel_err"] < 0.05 for t in q)
    emb = next(t for t in q if t["name"] == "tok_embeddings")
    assert sum(emb["group_err_hist"]) == np.prod(emb["shape"]) // v2["group_size"]
    assert os.path.basename(bins[0]) == v0["file"] and "/" not in json.dumps(v0["source"])


def test_all_zero_groups_have_zero_scale():
    """tiny_b's embedding rows 3 and 17 are zero: scale 0 and q 0, no NaN."""
    with BinFile(os.path.join(DATA, "tiny_b.v2.bin")) as bf:
        t = bf.tensors["tok_embeddings"]
        for row in (3, 17):
            q, scales = t.read_q8(row, row + 1)
            assert not scales.any() and not q.any()
        assert np.isfinite(t.read_all()).all()


@pytest.mark.parametrize("version,where", [(0, "values"), (1, "values"), (2, "values"), (1, "scales"), (2, "scales")])
def test_one_flipped_byte_in_a_weight_fails(tmp_path, version, where):
    golden = os.path.join(DATA, f"tiny_a.v{version}.bin")
    with BinFile(golden) as bf:
        t = bf.tensors["layers.1.attention.wk"]
        offset = (t.offset if where == "values" else t.scales_offset) + 13
    bad = flipped_copy(golden, tmp_path / "bad.bin", offset)
    proc = run_cli("verify", bad, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    assert "layers.1.attention.wk" in proc.stderr and "FAILED" in proc.stderr
    result = json.load(open(tmp_path / "r.json"))
    assert not result["passed"] and "layers.1.attention.wk" in result["failures"][0]


def test_flipped_rope_byte_fails(tmp_path):
    golden = os.path.join(DATA, "tiny_a.v0.bin")
    with BinFile(golden) as bf:
        offset = bf.tensors["freqs_sin"].offset + 4
    with open_source("llama2c", os.path.join(DATA, "tiny_a.pt")) as src:
        with open_output(flipped_copy(golden, tmp_path / "bad.bin", offset)) as bad:
            result = check_tensors(bad, src, quiet=True)
    assert result.failures == ["freqs_sin: rotary table differs from llama2.c's at rope_theta 10000"]


def test_header_must_match_the_source(tmp_path):
    proc = run_cli("verify", os.path.join(DATA, "tiny_a.v1.bin"), "--checkpoint", os.path.join(DATA, "tiny_b.pt"))
    assert proc.returncode == 1 and "header dim is 32, the source has 40" in proc.stderr


def test_max_seq_len_override_is_part_of_the_contract(tmp_path):
    out = str(tmp_path / "short.bin")
    ckpt = os.path.join(DATA, "tiny_a.pt")
    assert run_cli("export", out, "--checkpoint", ckpt, "--version", "0", "--max-seq-len", "8").returncode == 0
    with BinFile(out) as bf:
        assert bf.config.max_seq_len == 8 and bf.tensors["freqs_cos"].shape == (8, 4)
    assert run_cli("verify", out, "--checkpoint", ckpt).returncode == 1
    assert run_cli("verify", out, "--checkpoint", ckpt, "--max-seq-len", "8").returncode == 0


def test_verify_refuses_a_non_bin_file():
    proc = run_cli("verify", os.path.join(DATA, "tiny_a.pt"), "--checkpoint", os.path.join(DATA, "tiny_a.pt"))
    assert proc.returncode == 1 and "out of range" in proc.stderr and "Traceback" not in proc.stderr
