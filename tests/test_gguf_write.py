"""GGUF outputs against llama.cpp's converter, and read back independently (GGUFReader).

The golden files (tests/data/gguf/README.md) are what convert_hf_to_gguf.py wrote for our
checkpoint tiny_hf_gqa in each type. Our export of the same checkpoint must hold exactly the
converter's tensors (name, type, shape, bytes) and the same metadata keys, values and order;
only the tensor order differs (see formats/gguf_plan.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest
from gguf import GGUFReader

from llama2bin.checks.gguf_readback import verify_gguf
from llama2bin.errors import Llama2binError
from llama2bin.formats import gguf_encode, q8_fast
from llama2bin.formats.gguf_plan import GGUF_FILE_TYPES
from llama2bin.formats.gguf_vocab_hf import hf_sentencepiece_vocab
from llama2bin.formats.gguf_write import GgufModelInfo, export_gguf, gguf_layout
from llama2bin.sources.hf import HfSource

DATA = os.path.join(os.path.dirname(__file__), "data", "gguf")
CKPT = os.path.join(DATA, "tiny_hf_gqa")
TYPES = ("f32", "f16", "bf16", "q8_0")
NAME = "Tiny_Hf_Gqa"  # what the converter derived from the directory name


def info() -> GgufModelInfo:
    with HfSource(CKPT) as src:
        vocab = hf_sentencepiece_vocab(os.path.join(CKPT, "tokenizer.model"), src.config.vocab_size, CKPT)
    return GgufModelInfo(NAME, vocab)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("gguf")
    paths = {t: str(out / f"tiny.{t}.gguf") for t in TYPES}
    with HfSource(CKPT) as src:
        export_gguf(src, [(f"gguf-{t}", p) for t, p in paths.items()], info(), quiet=True)
    return paths


def fields(path: str) -> list[tuple[str, list[int], list[bytes]]]:
    return [(f.name, [int(t) for t in f.types], [bytes(f.parts[i]) for i in f.data]) for f in GGUFReader(path).fields.values()]


def tensors(path: str) -> dict[str, tuple[str, list[int], bytes]]:
    return {t.name: (t.tensor_type.name, [int(n) for n in t.shape], t.data.tobytes()) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("t", TYPES)
def test_tensors_and_metadata_equal_the_converters(exported, t) -> None:
    ref, ours = os.path.join(DATA, f"tiny_hf_gqa.{t}.gguf"), exported[t]
    assert tensors(ours) == tensors(ref)
    assert fields(ours) == fields(ref)  # every key, type, value, in the converter's order
    assert os.path.getsize(ours) == os.path.getsize(ref)


def test_what_the_converter_decided_is_what_we_decided(exported) -> None:
    """Facts of the golden files spelled out: the F16 fallback for rows of 80, F32 norms, GQA K
    shape, padded vocabulary, added tokens, no output tensor omitted (untied)."""
    got = tensors(exported["q8_0"])
    assert got["blk.0.ffn_down.weight"][:2] == ("F16", [80, 64])  # rows of 80: no whole Q8_0 blocks
    assert got["blk.0.ffn_gate.weight"][:2] == ("Q8_0", [64, 80])
    assert got["blk.1.attn_k.weight"][:2] == ("Q8_0", [64, 32])  # 2 kv heads x 16
    assert got["output_norm.weight"][0] == "F32" and got["output.weight"][:2] == ("Q8_0", [64, 304])
    r = GGUFReader(exported["q8_0"])
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert tokens[300:] == ["[PAD300]", "<|im_start|>", "<extra_tool>", "[PAD303]"] and types[300:] == [5, 3, 4, 5]
    assert types[:3] == [3, 3, 3]  # <unk> too: added_tokens_decoder marks it special
    assert r.fields["general.file_type"].contents() == 7


@pytest.mark.parametrize("t", TYPES)
def test_readback_passes_for_ours_and_the_converters(exported, t) -> None:
    with HfSource(CKPT) as src:
        for path in (exported[t], os.path.join(DATA, f"tiny_hf_gqa.{t}.gguf")):
            result = verify_gguf(path, src, info(), f"gguf-{t}")
            assert result.passed, result.failures
            assert len(result.tensors) == len(src.config.shapes())
    exact = all(s.max_abs_err == 0 for s in result.tensors)
    assert exact == (t == "f32")
    if t == "q8_0":
        assert 0.5 < result.header["q8_0_worst_error_over_d"] < 0.57  # beyond d/2: the fp32-vs-fp16 scale


def _damaged(src_path: str, dst: str, offset: int, byte: int) -> str:
    shutil.copyfile(src_path, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        f.write(bytes([byte]))
    return dst


@pytest.mark.parametrize("t", TYPES)
def test_readback_fails_a_flipped_weight_byte(exported, tmp_path, t) -> None:
    layout = gguf_layout(f"gguf-{t}", HfSource(CKPT).config, info())
    sec = next(s for s in layout.sections if s.tensor == "layers.1.attention.wk")
    target = sec.offset + sec.nbytes - 3  # a q (or the high byte of a float) near the end
    with open(exported[t], "rb") as f:
        f.seek(target)
        old = f.read(1)[0]
    path = _damaged(exported[t], str(tmp_path / "bad.gguf"), target, old ^ 0x40)
    with HfSource(CKPT) as src:
        result = verify_gguf(path, src, info(), f"gguf-{t}")
    assert not result.passed and any("blk.1.attn_k.weight" in f for f in result.failures), result.failures


def test_readback_fails_changed_metadata(exported, tmp_path) -> None:
    raw = open(exported["f16"], "rb").read()
    at = raw.index(b"llama.rope.freq_base") + len(b"llama.rope.freq_base") + 4  # the float after the type
    path = _damaged(exported["f16"], str(tmp_path / "bad.gguf"), at + 3, raw[at + 3] ^ 0x01)
    with HfSource(CKPT) as src:
        result = verify_gguf(path, src, info(), "gguf-f16")
    assert any("llama.rope.freq_base" in f for f in result.failures), result.failures


def test_readback_fails_against_another_source(exported, tmp_path) -> None:
    """A file checked against a different checkpoint of the same shape fails on values."""
    other = tmp_path / "other"
    shutil.copytree(CKPT, other)
    with HfSource(str(other)) as src:  # same weights: passes
        assert verify_gguf(exported["f32"], src, info(), "gguf-f32").passed
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(other / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * np.float32(1.5)
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    with HfSource(str(other)) as src:
        failures = verify_gguf(exported["f32"], src, info(), "gguf-f32").failures
    assert any("output_norm.weight" in f for f in failures), failures


def test_export_is_deterministic_and_single_pass_equals_separate(exported, tmp_path) -> None:
    with HfSource(CKPT) as src:
        export_gguf(src, [("gguf-q8_0", str(tmp_path / "a.gguf"))], info(), threads=1, quiet=True)
        export_gguf(src, [("gguf-q8_0", str(tmp_path / "b.gguf"))], info(), threads=2, quiet=True)
    a, b = (tmp_path / "a.gguf").read_bytes(), (tmp_path / "b.gguf").read_bytes()
    assert a == b == open(exported["q8_0"], "rb").read()


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
@pytest.mark.parametrize("threads", [1, 2])
def test_the_compiled_encoders_write_the_converters_bytes(tmp_path, monkeypatch, threads) -> None:
    """The compiled F16 and Q8_0 encoders (formats/gguf_kernel.py), loaded before the workers fork
    and used by them, write exactly the converter's tensors, as the numpy encoders do."""
    monkeypatch.setenv(q8_fast.ENV_SWITCH, "numba")
    monkeypatch.setattr(gguf_encode, "_use", False)

    def numpy_encoder(*args: object) -> None:
        raise AssertionError("the numpy encoder ran")

    # the workers inherit these: an export that still succeeds never used the numpy encoders
    monkeypatch.setattr(gguf_encode, "_encode_q8_0", numpy_encoder)
    monkeypatch.setattr(gguf_encode, "_encode_f16", numpy_encoder)
    paths = {t: str(tmp_path / f"tiny.{t}.gguf") for t in ("f16", "q8_0")}
    with HfSource(CKPT) as src:
        export_gguf(src, [(f"gguf-{t}", p) for t, p in paths.items()], info(), threads=threads, quiet=True)
    for t, path in paths.items():
        assert tensors(path) == tensors(os.path.join(DATA, f"tiny_hf_gqa.{t}.gguf"))


def test_non_finite_source_is_refused_without_output(tmp_path) -> None:
    d = tmp_path / "nan"
    shutil.copytree(CKPT, d)
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(d / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][3, 7] = np.nan
    save_file(weights, str(d / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    with HfSource(str(d)) as src, pytest.raises(Llama2binError, match=r"tensor .*up_proj.* contains NaN or Inf"):
        export_gguf(src, [("gguf-f16", str(out / "m.gguf"))], info(), quiet=True)
    assert os.listdir(out) == []  # nothing under a final name, no partial file left


def test_every_format_name_has_a_file_type() -> None:
    assert sorted(GGUF_FILE_TYPES) == ["gguf-bf16", "gguf-f16", "gguf-f32", "gguf-q8_0"]


def test_readback_passes_blocks_whose_scale_reciprocal_overflows(tmp_path) -> None:
    """Values below ~3.7e-37: 1/d overflows, gguf-py and ggml write q = 0 with a zero float16
    scale, and the file is correct (the read-back bound once called it wrong); a q moved there
    is still caught."""
    from llama2bin.checks.gguf_readback import _check_block, _ChunkResult
    from llama2bin.formats.gguf_encode import encode_into, encoded_nbytes
    from llama2bin.formats.q8_0 import Scratch
    from llama2bin.sources.gguf_file import GgmlType

    x = (np.random.default_rng(4).standard_normal(96) * 0.02).astype(np.float32)
    x[32:64] *= np.float32(1e-37)
    raw = np.empty(encoded_nbytes(GgmlType.Q8_0, x.size), np.uint8)
    encode_into(GgmlType.Q8_0, x, raw, Scratch(), "t")
    assert not raw[34:68].any()
    assert _check_block(x, raw, GgmlType.Q8_0, _ChunkResult(), []) is None
    raw[34 + 2 + 5] = 1
    assert "values differ" in _check_block(x, raw, GgmlType.Q8_0, _ChunkResult(), [])
