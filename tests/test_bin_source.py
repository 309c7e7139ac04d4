"""An existing .bin as the source (issue 12.2): every version round trips against the golden files.

The golden files were written by the seed from the checkpoints, so "v0 -> v2 equals the golden
v2" is a comparison with an independent writer, and "v2 -> v1 equals the golden v1" proves the
q and scales were carried over, not re-quantized.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from conftest import assert_refused, export
from helpers import DATA, preset_args, preset_arrays, run_cli, save_llama2c
from hostile_harness import HostileCase, run_hostile

from llama2bin.checks.tensor import check_tensors
from llama2bin.cli import main
from llama2bin.formats.bin_source import BinSource
from llama2bin.formats.families import open_output
from llama2bin.formats.reader import BinFile

MODELS = ("tiny_a", "tiny_b", "tiny_hf_untied")  # tiny_b: GQA, group size 8; tiny_hf_untied: negative vocab_size


def golden(name: str) -> str:
    return os.path.join(DATA, name)


def _check(path: str, source: BinSource):  # type: ignore[no-untyped-def]
    with open_output(path) as output:
        return check_tensors(output, source, quiet=True)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("model", MODELS)
def test_v0_source_gives_every_golden_version(model, tmp_path):
    versions = ("0", "1", "2") if model != "tiny_hf_untied" else ("0", "2")
    outs = export(tmp_path, "--bin", golden(f"{model}.v0.bin"), *versions)
    for v, out in zip(versions, outs, strict=True):
        assert read(out) == read(golden(f"{model}.v{v}.bin")), f"v0 -> v{v}"


@pytest.mark.parametrize("model", MODELS)
def test_float32_v1f_round_trips(model, tmp_path):
    """llama2.c's current float32 v1 ("1f") in and out: exact both ways."""
    master = golden(f"{model}.master_v1.bin")
    (v0,) = export(tmp_path, "--bin", master, "0")
    assert read(v0) == read(golden(f"{model}.v0.bin"))
    (v1f,) = export(tmp_path, "--bin", golden(f"{model}.v0.bin"), "1f")
    assert read(v1f) == read(master)


@pytest.mark.parametrize(("model", "src", "dst"), [("tiny_a", "2", "1"), ("tiny_b", "2", "1"), ("tiny_b", "1", "2")])
def test_q8_to_q8_at_the_same_group_size_is_lossless(model, src, dst, tmp_path):
    (out,) = export(tmp_path, "--bin", golden(f"{model}.v{src}.bin"), dst)
    assert read(out) == read(golden(f"{model}.v{dst}.bin"))
    with BinSource(golden(f"{model}.v{src}.bin")) as source:
        result = _check(out, source)
    assert result.passed, result.failures
    assert result.source_quantized == {"format": src, "group_size": 8 if model == "tiny_b" else 32}
    assert all(t.max_abs_err == 0 for t in result.tensors)


def test_verify_compares_q_and_scales_with_the_q8_source_bit_for_bit(tmp_path):
    (out,) = export(tmp_path, "--bin", golden("tiny_a.v2.bin"), "1")
    with BinFile(out) as bf:
        scale_at = bf.tensors["layers.1.attention.wq"].scales_offset + 4 * 3
    data = bytearray(read(out))
    (scale,) = struct.unpack_from("<f", data, scale_at)
    struct.pack_into("<f", data, scale_at, np.nextafter(np.float32(scale), np.float32(1)))  # one ulp
    bad = tmp_path / "bad.v1.bin"
    bad.write_bytes(bytes(data))
    with BinSource(golden("tiny_a.v2.bin")) as source:
        result = _check(str(bad), source)
    assert result.failures == ["tensor layers.1.attention.wq: scale of group 3 differs from the Q8_0 source"]


def test_q8_to_float32_is_dequantized_and_says_so(tmp_path):
    (out,) = export(tmp_path, "--bin", golden("tiny_b.v2.bin"), "0")
    with BinFile(golden("tiny_b.v2.bin")) as q8, BinFile(out) as f32:
        raw = read(golden("tiny_b.v2.bin"))
        for name in q8.config.shapes():
            t = q8.tensors[name]
            if t.group_size is None:  # the norms are float32 in every version
                want = np.frombuffer(raw, "<f4", t.numel, t.offset)
            else:  # independently: q * scale per group, from the raw bytes' int8 and float32 views
                q = np.frombuffer(raw, np.int8, t.numel, t.offset).astype(np.float32).reshape(-1, t.group_size)
                want = (q * np.frombuffer(raw, "<f4", t.numel // t.group_size, t.scales_offset)[:, None]).reshape(-1)
            got = f32.tensors[name].read_all().reshape(-1)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name
    jpath = tmp_path / "v.json"
    assert main(["verify", out, "--bin", golden("tiny_b.v2.bin"), "--json", str(jpath), "--quiet",
                 "--no-functional"]) == 0
    record = json.loads(jpath.read_text())
    assert record["source_quantized"] == {"format": "2", "group_size": 8}
    assert record["source"]["kind"] == "bin" and record["rope_tables"]["theta"] == 10000.0
    reports = tmp_path / "reports"
    assert main(["report", str(jpath), "--model", "b", "--out-dir", str(reports), "--no-plots"]) == 0
    (md,) = [p for p in reports.iterdir() if p.name.endswith(".md")]
    assert "the source was already Q8_0 (version 2, group size 8)" in md.read_text()


def test_another_group_size_quantizes_twice_only_when_asked(tmp_path, capsys):
    out = tmp_path / "o" / "x.v2.bin"
    assert main(["export", str(out), "--bin", golden("tiny_a.v2.bin"), "--version", "2", "--group-size", "16"]) == 1
    err = capsys.readouterr().err
    assert "already Q8_0 at group size 32" in err and "--allow-requantize" in err and not out.exists()
    assert main(["export", str(out), "--bin", golden("tiny_a.v2.bin"), "--version", "2", "--group-size", "16",
                 "--allow-requantize", "--quiet"]) == 0
    with BinSource(golden("tiny_a.v2.bin")) as source:
        result = _check(str(out), source)  # against the dequantized source: a fresh quantization
    assert result.passed and result.group_size == 16


def _strip_rope(src: str, dst) -> str:
    with BinFile(src) as bf:
        cos, sin = bf.tensors["freqs_cos"], bf.tensors["freqs_sin"]
        start, end = cos.offset, sin.offset + sin.nbytes
    data = read(src)
    dst.write_bytes(data[:start] + data[end:])
    return str(dst)


@pytest.mark.parametrize("model", ["tiny_a", "tiny_hf_untied"])
def test_v0_without_rope_tables_is_read(model, tmp_path):
    stripped = _strip_rope(golden(f"{model}.v0.bin"), tmp_path / "norope.bin")
    with BinFile(stripped) as bf:
        assert "freqs_cos" not in bf.tensors
    (out,) = export(tmp_path, "--bin", stripped, "0")
    assert read(out) == read(golden(f"{model}.v0.bin"))  # the tables are llama2.c's again


def test_max_seq_len_override(tmp_path):
    (from_bin,) = export(tmp_path, "--bin", golden("tiny_a.v0.bin"), "0", extra=("--max-seq-len", "8"))
    from_ckpt = str(tmp_path / "ckpt.v0.bin")
    assert main(["export", from_ckpt, "--checkpoint", golden("tiny_a.pt"), "--max-seq-len", "8", "--quiet"]) == 0
    assert read(from_bin) == read(from_ckpt)


def _tokenizer_bin(path, n: int) -> str:
    pieces = [f"t{i}".encode() for i in range(n)]
    body = b"".join(struct.pack("<fI", -float(i), len(p)) + p for i, p in enumerate(pieces))
    path.write_bytes(struct.pack("<I", max(map(len, pieces))) + body)
    return str(path)


def test_tokenizer_bin_is_checked_and_copied(tmp_path):
    """Against the model's vocab size, from a v2 .bin: its header says it, no rope table (and so
    no torch) is needed."""
    tok = _tokenizer_bin(tmp_path / "tokenizer.bin", 64)  # tiny_a: vocab 64
    out = tmp_path / "out" / "tokenizer.bin"
    proc = run_cli("tokenizer", tok, str(out), "--bin", golden("tiny_a.v2.bin"))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == read(tok)
    wrong = tmp_path / "wrong" / "tokenizer.bin"
    assert_refused(run_cli("tokenizer", tok, str(wrong), "--bin", golden("tiny_b.v2.bin")), tok, "80")
    assert not wrong.exists()


# ---- bad input ------------------------------------------------------------------------------


def _edited(tmp_path, name: str, src: str, edit) -> str:  # type: ignore[no-untyped-def]
    data = bytearray(read(golden(src)))
    edit(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path)


def _nan_at(tensor: str, scales: bool = False):  # type: ignore[no-untyped-def]
    def edit(data: bytearray, src: str) -> None:
        with BinFile(golden(src)) as bf:
            t = bf.tensors[tensor]
            offset = (t.scales_offset if scales else t.offset) + 4 * 5
        struct.pack_into("<f", data, offset, float("nan"))
    return edit


HOSTILE = {
    "truncated": ("tiny_a.v2.bin", lambda d: d.__delitem__(slice(len(d) - 3, None)), "truncated"),
    "trailing": ("tiny_a.v0.bin", lambda d: d.extend(b"\0" * 8), "trailing bytes"),
    "version": ("tiny_a.v2.bin", lambda d: struct.pack_into("<i", d, 4, 7), "unsupported version 7"),
    "group_size": ("tiny_a.v2.bin", lambda d: struct.pack_into("<i", d, 37, 5), "group_size 5"),
}


@pytest.mark.parametrize("case", [*HOSTILE, "nan_weight", "inf_scale"])
def test_bad_bin_sources_are_refused(case, tmp_path):
    if case in HOSTILE:
        src, edit, needle = HOSTILE[case]
        path = _edited(tmp_path, "bad.bin", src, edit)
    elif case == "nan_weight":
        path = _edited(tmp_path, "bad.bin", "tiny_a.v0.bin", lambda d: _nan_at("layers.1.attention.wv")(d, "tiny_a.v0.bin"))
        needle = "layers.1.attention.wv"
    else:
        path = _edited(tmp_path, "bad.bin", "tiny_a.v2.bin",
                       lambda d: _nan_at("layers.0.feed_forward.w2", scales=True)(d, "tiny_a.v2.bin"))
        needle = "layers.0.feed_forward.w2"
    out = tmp_path / "out"
    outputs = [str(out / "m.v0.bin"), str(out / "m.v2.bin")]
    run_hostile(HostileCase(case, ["export", *outputs, "--bin", path, "--version", "0", "2", "--quiet"],
                            inputs=[path], outputs=outputs, needle=needle))
    assert not out.exists() or os.listdir(out) == []  # no partial file either


def test_the_error_names_the_file(tmp_path):
    path = _edited(tmp_path, "cut.bin", "tiny_a.v0.bin", lambda d: d.__delitem__(slice(100, None)))
    assert_refused(run_cli("export", str(tmp_path / "o.bin"), "--bin", path), path, "truncated")
    assert not (tmp_path / "o.bin").exists()


def test_q8_groups_that_straddle_rows_read_right(tmp_path):
    """stories260K's shape (hidden_dim 172) at group size 64, as v1 allows (and llama2.c's own v2 export
    writes): any rows dequantize like the reader's whole-tensor dequantization; to v2 it needs a
    requantization runq.c can run, refused unless asked."""
    changes = {"multiple_of": 4, "n_heads": 8, "n_kv_heads": 4}
    ckpt = save_llama2c(str(tmp_path / "s.pt"), preset_arrays("mha", **changes), {**preset_args("mha"), **changes})
    v1 = str(tmp_path / "s.v1.bin")
    assert main(["export", v1, "--checkpoint", ckpt, "--version", "1", "--quiet"]) == 0
    with BinFile(v1) as bf, BinSource(v1) as source:
        want = bf.tensors["layers.1.feed_forward.w2"].read_all()
        got = source.tensor("layers.1.feed_forward.w2")
        for start, stop in ((0, 64), (1, 3), (5, 6), (63, 64)):
            assert np.array_equal(got.read_rows(start, stop), want[start:stop]), (start, stop)
    v2 = tmp_path / "o" / "s.v2.bin"
    proc = run_cli("export", str(v2), "--bin", v1, "--version", "2")
    assert_refused(proc, "already Q8_0 at group size 64", "group size 4", "--allow-requantize")
    assert not v2.exists()
    assert main(["export", str(v2), "--bin", v1, "--version", "2", "--allow-requantize", "--quiet"]) == 0
    with BinSource(v1) as source:
        assert _check(str(v2), source).passed
