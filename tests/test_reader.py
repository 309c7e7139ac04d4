"""The round-trip reader and `inspect`: header parsing, tensor table, refusal of bad files."""

import json
import os
import struct

import numpy as np
import pytest
from conftest import assert_refused
from helpers import DATA, run_cli
from hostile_harness import HostileCase, run_hostile

from llama2bin.errors import Llama2binError
from llama2bin.formats.reader import BinFile

GOLDEN = os.path.join(DATA, "tiny_a.v0.bin")


def test_reader_reads_v0_tensors_at_seed_offsets():
    raw = open(GOLDEN, "rb").read()
    with BinFile(GOLDEN) as bf:
        assert bf.version == 0 and bf.config.dim == 32 and bf.config.shared_classifier
        emb = bf.tensors["tok_embeddings"]
        # v0 puts the embeddings right after the 28-byte header
        assert emb.offset == 28 and emb.shape == (64, 32)
        np.testing.assert_array_equal(emb.read_all().reshape(-1), np.frombuffer(raw, "<f4", 64 * 32, 28))
        assert emb.encoding == "f32" and emb.nbytes == 64 * 32 * 4  # read lazily, at its offset, as stored


def test_reader_dequantizes_q8_like_the_format_says():
    raw = open(os.path.join(DATA, "tiny_b.v2.bin"), "rb").read()
    with BinFile(os.path.join(DATA, "tiny_b.v2.bin")) as bf:
        assert bf.version == 2 and bf.group_size == 8
        t = bf.tensors["tok_embeddings"]
        q = np.frombuffer(raw, np.int8, 80 * 40, t.offset)
        s = np.frombuffer(raw, "<f4", 80 * 40 // 8, t.offset + 80 * 40)  # v2: scales right after q
        np.testing.assert_array_equal(t.read_all().reshape(-1), (q.reshape(-1, 8) * s[:, None]).reshape(-1))


def test_inspect_json_lists_every_tensor():
    proc = run_cli("inspect", os.path.join(DATA, "tiny_b.v1.bin"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["header"]["version"] == 1 and info["header"]["n_kv_heads"] == 2 and info["header"]["group_size"] == 8
    assert info["size_matches"] and info["size"] == os.path.getsize(os.path.join(DATA, "tiny_b.v1.bin"))
    names = [t["name"] for t in info["tensors"]]
    assert names[:5] == ["layers.0.attention_norm", "layers.1.attention_norm", "layers.0.ffn_norm",
                         "layers.1.ffn_norm", "norm"]
    assert len(names) == 5 + 1 + 7 * 2
    # v1 keeps all q values together, so consecutive q sections are adjacent
    q = [t for t in info["tensors"] if t["dtype"].startswith("q8_0")]
    for a, b in zip(q, q[1:], strict=False):
        assert a["offset"] + a["nbytes"] == b["offset"]


def test_inspect_text_output():
    proc = run_cli("inspect", GOLDEN)
    assert proc.returncode == 0
    assert "version 0" in proc.stdout and "matches" in proc.stdout and "freqs_cos" in proc.stdout


def _mutated(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda raw: raw[:-4], "truncated"),
        (lambda raw: raw + b"\0" * 8, "trailing bytes"),
        (lambda raw: struct.pack("<i", 2**31 - 1) + raw[4:], "dim = 2147483647"),
        (lambda raw: raw[:8] + struct.pack("<i", -1) + raw[12:], "n_layers = -1"),
        (lambda raw: raw[:10], "too short"),
        (lambda raw: b"", "too short"),
    ],
)
def test_bad_v0_files_are_refused(tmp_path, make, needle):
    path = _mutated(tmp_path, make(open(GOLDEN, "rb").read()))
    with pytest.raises(Llama2binError, match=needle.replace("(", r"\(")):
        BinFile(path)
    assert_refused(run_cli("inspect", path), needle)


@pytest.mark.parametrize(
    "offset,value,needle",
    [
        (4, struct.pack("<i", 3), "unsupported version 3"),
        (36, b"\x02", "shared_classifier"),
        (37, struct.pack("<i", 7), "group_size 7"),
        (100, b"\x01", "padding"),
    ],
)
def test_bad_quantized_headers_are_refused(tmp_path, offset, value, needle):
    raw = bytearray(open(os.path.join(DATA, "tiny_b.v2.bin"), "rb").read())
    raw[offset : offset + len(value)] = value
    path = _mutated(tmp_path, bytes(raw))
    assert_refused(run_cli("inspect", path), needle)


def test_wrong_magic_is_read_as_v0_and_refused(tmp_path):
    raw = bytearray(open(os.path.join(DATA, "tiny_b.v2.bin"), "rb").read())
    raw[0:4] = b"ak43"
    assert_refused(run_cli("inspect", _mutated(tmp_path, bytes(raw))), "no 'ak42' magic")


def test_random_headers_never_crash(tmp_path):
    """Fuzz the header: every outcome is a clean refusal or a consistent file, never an exception."""
    rng = np.random.default_rng(0)
    base = open(os.path.join(DATA, "tiny_b.v1.bin"), "rb").read()
    for _ in range(300):
        raw = bytearray(base)
        for pos in rng.integers(0, 64, size=rng.integers(1, 4)):
            raw[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            raw = raw[: int(rng.integers(0, len(raw)))]
        path = _mutated(tmp_path, bytes(raw))
        try:
            with BinFile(path) as bf:
                assert bf.size == bf.layout.size
        except Llama2binError:
            pass


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)
    assert_refused(run_cli("inspect", str(fifo)), "not a regular file")


# ---- which format: identified from the header alone ------------------------------------------

@pytest.mark.parametrize(
    "name,fmt,version,group_size",
    [("tiny_a.v0.bin", "0", 0, None), ("tiny_b.v1.bin", "1", 1, 8), ("tiny_b.master_v1.bin", "1f", 1, None),
     ("tiny_b.v2.bin", "2", 2, 8), ("tiny_hf_untied.master_v1.bin", "1f", 1, None)],
)
def test_reader_identifies_every_format_from_its_header(name, fmt, version, group_size):
    with BinFile(os.path.join(DATA, name)) as bf:
        assert (bf.format, bf.version, bf.group_size) == (fmt, version, group_size)


def test_reader_reads_1f_float32_norms_first():
    """llama2.c master's v1: 256-byte header, norms, then float32 matrices in the Q8_0 formats' order."""
    path = os.path.join(DATA, "tiny_hf_untied.master_v1.bin")
    raw = open(path, "rb").read()
    with BinFile(path) as bf, BinFile(os.path.join(DATA, "tiny_hf_untied.v0.bin")) as v0:
        assert not bf.config.shared_classifier and raw[36] == 0 and raw[37:41] == b"\0\0\0\0"
        first = bf.tensors["layers.0.attention_norm"]
        assert first.offset == 256
        assert bf.layout.sections[-1].tensor == "output"  # untied: the classifier last, no rope tables
        for name in v0.config.shapes():  # the same float32 weights as the golden v0 of the model
            np.testing.assert_array_equal(bf.tensors[name].read_all(), v0.tensors[name].read_all())


def test_inspect_names_the_format_in_words():
    seed = run_cli("inspect", os.path.join(DATA, "tiny_b.v1.bin"))
    master = run_cli("inspect", os.path.join(DATA, "tiny_b.master_v1.bin"))
    assert seed.returncode == master.returncode == 0
    assert "seed v1 (Q8_0" in seed.stdout.splitlines()[0]
    assert "llama2.c v1 (float32, current export.py --version 1" in master.stdout.splitlines()[0]
    info = json.loads(run_cli("inspect", os.path.join(DATA, "tiny_b.master_v1.bin"), "--json").stdout)
    assert info["format"] == "1f" and info["header"]["version"] == 1 and info["header"]["group_size"] is None
    assert all(t["dtype"] == "float32" for t in info["tensors"])


def _1f_mutations() -> list[tuple[str, str, bytes, str]]:
    """(case, golden, hostile bytes, needle): a seed v1 and a 1f each bent where the two meet."""
    seed_v1 = open(os.path.join(DATA, "tiny_b.v1.bin"), "rb").read()
    master = open(os.path.join(DATA, "tiny_a.master_v1.bin"), "rb").read()
    zero_gs = seed_v1[:37] + b"\0\0\0\0" + seed_v1[41:]  # header says 1f, body is Q8_0
    padded = master[:41] + b"\1" + master[42:]
    negative_gs = master[:37] + struct.pack("<i", -8) + master[41:]
    shared_2 = master[:36] + b"\2" + master[37:]
    return [
        ("seed v1 with group_size 0", zero_gs, "its v1f header implies"),
        ("1f with a byte after the header fields", padded, "padding is not zero (byte 41)"),
        ("1f with a negative group_size", negative_gs, "group_size = -8 at byte 37 is out of range"),
        ("1f with shared_classifier 2", shared_2, "shared_classifier = 2 at byte 36"),
        ("1f truncated", master[:-4], "truncated"),
        ("1f with trailing bytes", master + b"\0" * 4, "trailing bytes"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bent_version_1_headers_are_refused(tmp_path, case):
    name, data, needle = _1f_mutations()[case]
    path = _mutated(tmp_path, data)
    run_hostile(HostileCase(name, ["inspect", path], inputs=[path], needle=needle))


def test_verify_accepts_1f_against_its_source(tmp_path):
    out = tmp_path / "v.json"
    proc = run_cli("verify", os.path.join(DATA, "tiny_b.master_v1.bin"), "--checkpoint", os.path.join(DATA, "tiny_b.pt"),
                   "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "OK (v1f," in proc.stdout and "functional OK" in proc.stdout
    result = json.loads(out.read_text())
    assert result["format"] == "1f" and result["version"] == "1f" and result["group_size"] is None
    assert all(t["max_abs_err"] == 0.0 for t in result["tensors"])


def test_inspect_describes_an_hf_directory_through_the_registry():
    proc = run_cli("inspect", os.path.join(DATA, "tiny_hf_untied"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "hf" and info["header"]["dim"] == 32 and not info["header"]["shared_classifier"]
    names = [t["name"] for t in info["tensors"]]
    assert names[0] == "tok_embeddings" and names[-1] == "output" and len(names) == 2 + 1 + 9 * 2
    assert {t["dtype"] for t in info["tensors"]} == {"float32"}
    text = run_cli("inspect", os.path.join(DATA, "tiny_hf_untied"))
    assert text.returncode == 0 and "version hf: Hugging Face Llama directory" in text.stdout
