"""GGUF through the command line: export of every source kind to the registered GGUF formats
(--tokenizer, --name), a GGUF as the source (--gguf), the Q8_0 requantization rule, verify's
read-back + functional + llama.cpp checks, and inspect."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import run_main
from gguf import GGUFReader

from llama2bin.formats.gguf_vocab import tokenizer_bin_vocab, vocab_kvs

DATA = os.path.join(os.path.dirname(__file__), "data")
GGUF = os.path.join(DATA, "gguf")
HF = os.path.join(GGUF, "tiny_hf_gqa")


def _fields(path: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in GGUFReader(path).fields.values():
        if f.types and f.types[0] == 8:
            out[f.name] = bytes(f.parts[f.data[0]]).decode()
        elif len(f.data) == 1:
            out[f.name] = f.parts[f.data[0]].tolist()[0]
        else:
            out[f.name] = len(f.data)
    return out


def _tensors(path: str) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in GGUFReader(path).tensors}


def test_export_writes_the_registered_types_as_the_converter_does(tmp_path, capsys) -> None:
    outs = [str(tmp_path / f"m.{t}.gguf") for t in ("f32", "f16", "bf16", "q8_0")]
    rc = run_main(["export", *outs, "--hf", HF, "--version", "gguf-f32,gguf-f16,gguf-bf16,gguf-q8_0",
                   "--name", "Tiny_Hf_Gqa", "--quiet"], capsys)
    assert rc.returncode == 0, rc.stderr
    for t, out in zip(("f32", "f16", "bf16", "q8_0"), outs, strict=True):
        golden = os.path.join(GGUF, f"tiny_hf_gqa.{t}.gguf")
        assert _tensors(out) == _tensors(golden) and _fields(out) == _fields(golden), t


def test_a_name_that_says_another_type_is_refused(tmp_path, capsys) -> None:
    rc = run_main(["export", str(tmp_path / "m.f16.gguf"), "--hf", HF, "--version", "gguf-q8_0", "--quiet"], capsys)
    assert rc.returncode == 1 and "the file name says version gguf-f16" in rc.stderr
    assert not os.listdir(tmp_path)


def test_tokenizer_and_name_without_a_gguf_output_are_refused(tmp_path, capsys) -> None:
    rc = run_main(["export", str(tmp_path / "a.v2.bin"), "--hf", HF, "--version", "2", "--name", "x", "--quiet"], capsys)
    assert rc.returncode == 1 and "--name: none of the outputs stores it" in rc.stderr and not os.listdir(tmp_path)


def test_a_llama2c_checkpoint_with_its_tokenizer_bin(tmp_path, capsys) -> None:
    """--tokenizer names the vocabulary a .pt does not hold; verify checks it from the same file."""
    from llama2bin.sources.llama2c import Llama2cSource

    tok = str(tmp_path / "tok.bin")  # llama2.c's layout: max length, then (score, length, bytes) per token
    ckpt = os.path.join(DATA, "tiny_a.pt")
    with Llama2cSource(ckpt) as src:
        n = src.config.vocab_size
    pieces = [b"<unk>", b"<s>", b"</s>", *[bytes([0x61 + i % 26]) * (1 + i // 26) for i in range(n - 3)]]
    with open(tok, "wb") as f:
        f.write(int(max(len(p) for p in pieces)).to_bytes(4, "little"))
        for i, p in enumerate(pieces):
            f.write(np.float32(-i).tobytes() + len(p).to_bytes(4, "little") + p)
    out = str(tmp_path / "a.f16.gguf")
    assert run_main(["export", out, "--checkpoint", ckpt, "--version", "gguf-f16", "--tokenizer", tok, "--quiet"],
                    capsys).returncode == 0
    want = {kv.key: kv.value for kv in vocab_kvs(tokenizer_bin_vocab(tok, n))}
    got = _fields(out)
    assert got["tokenizer.ggml.model"] == "llama" and got["tokenizer.ggml.tokens"] == len(want["tokenizer.ggml.tokens"])
    assert got["general.name"] == "tiny_a"  # the source's name without --name
    rc = run_main(["verify", out, "--checkpoint", ckpt, "--tokenizer", tok, "--quiet", "--eval-seqs", "1",
                   "--eval-len", "8", "--json", str(tmp_path / "v.json")], capsys)
    assert rc.returncode == 0, rc.stderr
    # without the tokenizer it was exported with, the keys differ: a failure naming them
    rc = run_main(["verify", out, "--checkpoint", ckpt, "--quiet", "--no-functional"], capsys)
    assert rc.returncode == 1 and "tokenizer.ggml.model" in rc.stderr


def test_a_q8_0_gguf_source_requantizes_only_when_allowed(tmp_path, capsys) -> None:
    src = os.path.join(GGUF, "tiny_hf_gqa.q8_0.gguf")
    out = str(tmp_path / "r.q8_0.gguf")
    rc = run_main(["export", out, "--gguf", src, "--version", "gguf-q8_0", "--quiet"], capsys)
    assert rc.returncode == 1 and "--allow-requantize" in rc.stderr and not os.path.exists(out)
    rc = run_main(["export", out, "--gguf", src, "--version", "gguf-q8_0", "--quiet", "--allow-requantize"], capsys)
    assert rc.returncode == 0 and "quantized again" in rc.stdout
    # Q8_0 blocks of 32 quantized again from q*d: d = 127*d16/127 = d16 exactly, the same q
    assert _tensors(out) == _tensors(src) and _fields(out)["tokenizer.ggml.tokens"] == _fields(src)["tokenizer.ggml.tokens"]


def test_a_gguf_source_to_v0_and_f16_is_recorded_as_dequantized(tmp_path, capsys) -> None:
    src = os.path.join(GGUF, "tiny_hf_gqa.q8_0.gguf")
    v0, f16 = str(tmp_path / "d.v0.bin"), str(tmp_path / "d.f16.gguf")
    rc = run_main(["export", v0, f16, "--gguf", src, "--version", "0,gguf-f16", "--quiet"], capsys)
    assert rc.returncode == 0 and "dequantized" in rc.stdout
    records = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    rc = run_main(["verify", v0, f16, "--gguf", src, "--quiet", "--eval-seqs", "1", "--eval-len", "16", "--json",
                   *records], capsys)
    assert rc.returncode == 0, rc.stderr
    for path in records:
        record = json.load(open(path))
        assert record["correct"] and record["source_quantized"] == {"format": "gguf-q8_0", "group_size": 32}
    # the F16 GGUF keeps the source GGUF's own tokenizer keys
    assert _fields(f16)["tokenizer.chat_template"] == _fields(src)["tokenizer.chat_template"]


def test_verify_reads_a_gguf_back_and_runs_the_functional_and_llama_cpp_checks(tmp_path, capsys) -> None:
    out = str(tmp_path / "m.q8_0.gguf")
    assert run_main(["export", out, "--hf", HF, "--version", "gguf-q8_0", "--quiet"], capsys).returncode == 0
    record = str(tmp_path / "v.json")
    rc = run_main(["verify", out, "--hf", HF, "--quiet", "--eval-seqs", "1", "--eval-len", "16", "--json", record,
                   "--activations", "q8"], capsys)
    assert rc.returncode == 0, rc.stderr
    r = json.load(open(record))
    assert r["format"] == "gguf-q8_0" and r["group_size"] == 32 and r["functional"]["quantized"]
    assert r["functional"]["arithmetic"] == "f32"  # runq.c's q8 is not llama.cpp's arithmetic: f32, recorded
    # ffn_down's rows of 80 are not whole blocks of 32: F16, as the converter falls back
    assert {t["encoding"] for t in r["tensors"]} == {"q8_0", "f16", "f32"}
    lc = r["llamacpp"]
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert not os.environ.get("LLAMA2BIN_REQUIRE_LLAMACPP"), "CI installs the llamacpp extra: the check must run"
        assert lc["skipped"] and "llama2bin: notice:" in rc.stderr
    else:
        assert lc["passed"] and lc["max_abs_diff"] <= lc["tolerance"] and "llama.cpp" in rc.stdout


def test_verify_fails_a_gguf_whose_tensor_was_changed(tmp_path, capsys) -> None:
    out = str(tmp_path / "m.f32.gguf")
    assert run_main(["export", out, "--hf", HF, "--version", "gguf-f32", "--quiet"], capsys).returncode == 0
    t = next(t for t in GGUFReader(out).tensors if t.name == "blk.1.ffn_down.weight")
    with open(out, "r+b") as f:
        f.seek(int(t.data_offset) + 40)
        f.write(np.float32(3.0).tobytes())
    rc = run_main(["verify", out, "--hf", HF, "--quiet", "--no-functional"], capsys)
    assert rc.returncode == 1 and "blk.1.ffn_down.weight" in rc.stderr


def test_inspect_shows_metadata_and_the_tensor_table(capsys) -> None:
    path = os.path.join(GGUF, "tiny_hf_gqa.bf16.gguf")
    rc = run_main(["inspect", path], capsys)
    assert rc.returncode == 0
    assert "version gguf-bf16" in rc.stdout and "llama.attention.head_count_kv = 2" in rc.stdout
    assert "BF16" in rc.stdout and "blk.0.attn_q.weight" in rc.stdout
    info = json.loads(run_main(["inspect", path, "--json"], capsys).stdout)
    assert info["size_matches"] and info["header"]["tokenizer.ggml.tokens"] == "[304 STRING]"
    assert [t["name"] for t in info["tensors"]] == [t.name for t in GGUFReader(path).tensors]


@pytest.mark.parametrize("kind", [pytest.param("meta", marks=pytest.mark.slow), "bin", "gguf"])  # meta: torch.save
def test_every_source_kind_writes_a_gguf(kind, checkpoint, tmp_path, capsys) -> None:
    src = checkpoint(kind)
    out = str(tmp_path / "k.f32.gguf")
    flag = {"meta": "--meta-llama", "bin": "--bin", "gguf": "--gguf"}[kind]
    rc = run_main(["export", out, flag, src, "--version", "gguf-f32", "--quiet"], capsys)
    assert rc.returncode == 0, rc.stderr
    rc = run_main(["verify", out, flag, src, "--quiet", "--no-functional"], capsys)
    assert rc.returncode == 0, rc.stderr


def test_without_the_binding_verify_skips_llama_cpp_with_a_one_line_notice(tmp_path, capsys, monkeypatch) -> None:
    from llama2bin.checks import llamacpp

    def missing() -> str:
        raise llamacpp.LlamaCppUnavailable("llama.cpp check skipped: the llama-cpp-python binding is not installed")

    monkeypatch.setattr(llamacpp, "llama_cpp_version", missing)
    out = str(tmp_path / "m.f32.gguf")
    assert run_main(["export", out, "--hf", HF, "--version", "gguf-f32", "--quiet"], capsys).returncode == 0
    record = str(tmp_path / "v.json")
    rc = run_main(["verify", out, "--hf", HF, "--quiet", "--eval-seqs", "1", "--eval-len", "8", "--json", record], capsys)
    assert rc.returncode == 0
    notices = [line for line in rc.stderr.splitlines() if "llama.cpp" in line]
    assert notices == [f"llama2bin: notice: {out}: llama.cpp check skipped: the llama-cpp-python binding is not installed"]
    r = json.load(open(record))
    assert r["correct"] and r["llamacpp"]["skipped"] and r["llamacpp"]["passed"] is None
