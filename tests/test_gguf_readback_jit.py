"""The compiled read-back checks (checks/gguf_readback_jit.py) give the numpy checks' verdicts,
messages and statistics bit for bit. Q8_0: crafted blocks (trained-like tails, zero and
negative-zero blocks, tiny scales, a reciprocal that overflows, exact rounding ties, an outlier,
NaN left to numpy) and their corruptions (a q moved by one, a tie broken the other way, scale
bits). F16 and BF16: every magnitude, exact ties, zeros and signs, and their corruptions (one
ulp, a sign, an inf), NaN/Inf/the top of the range left to numpy. Then whole GGUF files of each
type against the converter's golden output, passing and damaged."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil

import numpy as np
import pytest

from llama2bin.checks import gguf_readback
from llama2bin.checks.gguf_readback import verify_gguf
from llama2bin.formats.gguf_encode import encode_into, encoded_nbytes
from llama2bin.formats.gguf_write import gguf_layout
from llama2bin.formats.q8_0 import Scratch
from llama2bin.sources.gguf_file import GgmlType
from llama2bin.sources.hf import HfSource

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")

DATA = os.path.join(os.path.dirname(__file__), "data", "gguf")
CKPT = os.path.join(DATA, "tiny_hf_gqa")


def _values() -> np.ndarray:
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, 1 << 16) * 0.02 * np.where(rng.random(1 << 16) < 0.01, 30.0, 1.0)).astype(np.float32)
    blocks = x.reshape(-1, 32)
    blocks[0] = 0.0
    blocks[1] = -0.0
    blocks[2] = rng.standard_normal(32).astype(np.float32) * np.float32(1e-36)  # tiny d, 1/d finite
    blocks[3, 0], blocks[3, 1:] = 127.0, (np.arange(31) - 15 + 0.5)  # d = 1: every value an exact tie
    blocks[4, :] = 0.01
    blocks[4, 7] = 20.0  # one outlier
    blocks[5] = rng.standard_normal(32).astype(np.float32) * np.float32(1e-39)  # 1/d overflows: q = 0
    return x


def _encoded(x: np.ndarray) -> np.ndarray:
    raw = np.empty(encoded_nbytes(GgmlType.Q8_0, x.size), np.uint8)
    return encode_into(GgmlType.Q8_0, x, raw, Scratch(), "t").copy()


def _check(x: np.ndarray, raw: np.ndarray, compiled: bool, monkeypatch) -> tuple:
    with monkeypatch.context() as m:
        m.setattr(gguf_readback, "_use_jit", compiled)
        if compiled:  # the numpy branch must not run
            m.setattr(gguf_readback, "_q8_0_reference", lambda x: pytest.fail("the numpy check ran"))
        out, gmax = gguf_readback._ChunkResult(), []
        verdict = gguf_readback._check_block(x, raw, GgmlType.Q8_0, out, gmax)
    return verdict, dataclasses.astuple(out), [g.tobytes() for g in gmax]


def _damage(raw: np.ndarray, at: int, delta: int) -> np.ndarray:
    bad = raw.copy()
    bad[at] = (int(bad[at]) + delta) % 256
    return bad


@pytest.fixture(scope="module", autouse=True)
def loaded():
    assert gguf_readback.load_compiled(), "numba is installed but the compiled check did not load"


def test_a_correct_file_gives_the_same_statistics(monkeypatch):
    x = _values()
    raw = _encoded(x)
    numpy_result = _check(x, raw, False, monkeypatch)
    assert numpy_result[0] is None and numpy_result[1][1] == x.size  # passes, every value counted
    assert _check(x, raw, True, monkeypatch) == numpy_result


@pytest.mark.parametrize("at, delta, message", [
    (34 * 5 + 2 + 3, 1, "values differ"),  # a q moved by one
    (34 * 3 + 2 + 20, 1, "values differ"),  # a tie broken the other way (-5.5 read as -4.5 +- 1)
    (34 * 7, 1, "scales differ"),  # the low bit of a float16 scale
    (34 * 9 + 1, 4, "scales differ"),  # its exponent
    (34 * 2 + 2 + 11, 100, "values differ"),  # in the tiny-scale block
])
def test_a_damaged_block_gets_the_same_verdict(monkeypatch, at, delta, message):
    x = _values()
    bad = _damage(_encoded(x), at, delta)
    verdict = _check(x, bad, False, monkeypatch)
    assert message in verdict[0]
    assert _check(x, bad, True, monkeypatch) == verdict


def test_the_bound_of_a_block_whose_reciprocal_overflowed(monkeypatch):
    """A block of values below ~3.7e-37: 1/d overflows, both references write q = 0 and a zero
    float16 scale, so the error is |x| itself. Correct files pass (they failed the bound before);
    a q that is not 0 there is wrong in both paths."""
    x = _values()
    raw = _encoded(x)
    assert not raw[34 * 5 : 34 * 6].any()  # d16 = 0, every q = 0
    assert _check(x, raw, False, monkeypatch)[0] is None
    assert _check(x, raw, True, monkeypatch) == _check(x, raw, False, monkeypatch)
    bad = _damage(raw, 34 * 5 + 2 + 4, 1)
    verdict = _check(x, bad, False, monkeypatch)
    assert "values differ" in verdict[0]
    assert _check(x, bad, True, monkeypatch) == verdict


def test_a_source_that_moved_gets_the_same_verdict(monkeypatch):
    """The file is another source's: one value moved by ~0.9 of its block's scale."""
    x = _values()
    raw = _encoded(x)
    far = x.copy()
    block = 40
    scale = np.abs(far[block * 32:(block + 1) * 32]).max() / 127
    far[block * 32 + 3] = np.float32(far[block * 32 + 3] + scale * 0.9)
    verdict = _check(far, raw, False, monkeypatch)
    assert verdict[0] is not None
    assert _check(far, raw, True, monkeypatch) == verdict


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # numpy's int8 cast of NaN
def test_a_non_finite_source_is_left_to_numpy(monkeypatch):
    x = _values()
    raw = _encoded(x)
    x[100] = np.nan
    numpy_result = _check(x, raw, False, monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(gguf_readback, "_use_jit", True)
        out, gmax = gguf_readback._ChunkResult(), []
        verdict = gguf_readback._check_block(x, raw, GgmlType.Q8_0, out, gmax)
    assert (verdict, dataclasses.astuple(out), [g.tobytes() for g in gmax]) == numpy_result


def _verify(path: str, compiled: bool, monkeypatch, fmt: str = "gguf-q8_0") -> dict:
    """verify_gguf with the compiled check forced on (its size rule at 0) or off."""
    with monkeypatch.context() as m:
        m.setattr(gguf_readback, "COMPILED_KERNEL_MIN_WEIGHTS", 0 if compiled else 1 << 62)
        m.setattr(gguf_readback, "_jit", gguf_readback._jit if compiled else None)
        with HfSource(CKPT) as src:
            result = verify_gguf(path, src, gguf_readback.GgufModelInfo(
                "Tiny_Hf_Gqa", _vocab(src)), fmt, threads=2)
        assert gguf_readback._use_jit == compiled
    return result.to_json()


def _vocab(src: HfSource):
    from llama2bin.formats.gguf_vocab_hf import hf_sentencepiece_vocab

    return hf_sentencepiece_vocab(os.path.join(CKPT, "tokenizer.model"), src.config.vocab_size, CKPT)


@pytest.mark.parametrize("kind, at", [("q8_0", 34 * 3 + 2 + 5), ("f16", 2 * 77 + 1), ("bf16", 2 * 77 + 1)])
def test_whole_files_give_the_same_result_json(tmp_path, monkeypatch, kind, at):
    golden = os.path.join(DATA, f"tiny_hf_gqa.{kind}.gguf")
    with HfSource(CKPT) as src:
        layout = gguf_layout(f"gguf-{kind}", src.config, gguf_readback.GgufModelInfo("Tiny_Hf_Gqa", _vocab(src)))
    sec = next(s for s in layout.sections if s.tensor == "layers.1.feed_forward.w2")
    damaged = str(tmp_path / "bad.gguf")
    shutil.copyfile(golden, damaged)
    with open(damaged, "r+b") as f:
        f.seek(sec.offset + at)
        f.write(b"\x7f")
    for path in (golden, damaged):
        got = _verify(path, True, monkeypatch, f"gguf-{kind}")
        assert got == _verify(path, False, monkeypatch, f"gguf-{kind}")
        assert got["passed"] == (path == golden)


# ---- F16 and BF16 ------------------------------------------------------------------------------

def _16bit_values(ggml_type: GgmlType) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = (rng.standard_t(3, 1 << 15) * 0.02).astype(np.float32)
    top = 0x477FE000 if ggml_type == GgmlType.F16 else 0x7F7F0000  # below the type's top
    bits = rng.integers(0, top, 4096, dtype=np.uint32) | (rng.integers(0, 2, 4096, dtype=np.uint32) << 31)
    x[:4096] = bits.view(np.float32)  # every magnitude the type holds, subnormals included
    if ggml_type == GgmlType.F16:  # exact midpoints between float16 neighbours (ties), both parities
        h = np.arange(1, 1000, dtype=np.uint16) * np.uint16(31)  # below 0x7C00 (inf)
        lo, hi = h.view(np.float16).astype(np.float64), (h + np.uint16(1)).view(np.float16).astype(np.float64)
        x[4096 : 4096 + h.size] = ((lo + hi) / 2).astype(np.float32)
        edges = [0.0, -0.0, -1e-10, 1e-10, 65504.0, 65519.99, 2.0**-24, 2.0**-25, 3 * 2.0**-25, -(2.0**-25), 2.0**-14]
    else:  # exact midpoints between bfloat16 neighbours
        b = rng.integers(0x0001, 0x7F00, 2000, dtype=np.uint32) << np.uint32(16)
        x[4096:6096] = (b | np.uint32(0x8000)).view(np.float32)
        edges = [0.0, -0.0, 1e-45, -1e-45, 3.3e38, float(np.uint32(0x7F7F7FFF).view(np.float32))]
    x[6100 : 6100 + len(edges)] = np.array(edges, np.float32)
    if ggml_type == GgmlType.F16:  # just below the midpoint under a binade's first value (rounds down)
        x[6200:6203] = [2.0 - 2.0**-11 - 2.0**-20, 1024.0 - 2.0**-2 - 2.0**-10, 2.0**-14 - 2.0**-25 - 2.0**-30]
    return x


def _raw16(ggml_type: GgmlType, x: np.ndarray) -> np.ndarray:
    raw = np.empty(encoded_nbytes(ggml_type, x.size), np.uint8)
    return encode_into(ggml_type, x, raw, Scratch(), "t").copy()


def _check16(ggml_type: GgmlType, x: np.ndarray, raw: np.ndarray, compiled: bool, monkeypatch) -> tuple:
    with monkeypatch.context() as m:
        m.setattr(gguf_readback, "_use_jit", compiled)
        if compiled:  # the numpy references must not run
            for name in ("_f16_reference", "_bf16_reference"):
                m.setattr(gguf_readback, name, lambda x: pytest.fail("the numpy check ran"))
        out = gguf_readback._ChunkResult()
        verdict = gguf_readback._check_block(x, raw, ggml_type, out, [])
    return verdict, dataclasses.astuple(out)


@pytest.mark.parametrize("ggml_type", [GgmlType.F16, GgmlType.BF16], ids=lambda t: t.name)
def test_16bit_files_give_the_same_verdicts_and_statistics(monkeypatch, ggml_type):
    x = _16bit_values(ggml_type)
    raw = _raw16(ggml_type, x)
    good = _check16(ggml_type, x, raw, False, monkeypatch)
    assert good[0] is None and good[1][1] == x.size
    assert _check16(ggml_type, x, raw, True, monkeypatch) == good
    h = raw.view(np.uint16)
    tie = 4096 + 7
    for i, change in [(5, 1), (5000, 1), (tie, 1), (tie, -1), (6100, 0x8000), (6101, 0x8000), (6102, 0x8000),
                      (6107, 1), (6200, 1), (6201, 1), (6202, 1),
                      (300, 0x7C00 if ggml_type == GgmlType.F16 else 0x7F80)]:
        bad = raw.copy()
        bh = bad.view(np.uint16)
        bh[i] = (h[i] ^ change) if change in (0x8000, 0x7C00, 0x7F80) else (int(h[i]) + change) % 65536
        verdict = _check16(ggml_type, x, bad, False, monkeypatch)
        assert verdict[0] is not None, (i, change)
        assert _check16(ggml_type, x, bad, True, monkeypatch) == verdict


@pytest.mark.parametrize("ggml_type", [GgmlType.F16, GgmlType.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("value", [np.nan, np.inf, 65520.0, 3.4e38])
@pytest.mark.filterwarnings("ignore:overflow encountered in cast", "ignore:invalid value encountered")
def test_16bit_values_numpy_must_judge_are_left_to_it(monkeypatch, ggml_type, value):
    """NaN, Inf and the top of the range (where the references round to inf or keep the maximum)."""
    x = _16bit_values(ggml_type)[:4096]
    raw = _raw16(ggml_type, x)
    x[9] = value
    reference = gguf_readback._f16_reference if ggml_type == GgmlType.F16 else gguf_readback._bf16_reference
    for stored in (raw.view(np.uint16)[9], reference(x[9:10])[0]):  # the file disagrees, or holds what numpy wants
        raw.view(np.uint16)[9] = stored
        numpy_result = _check16(ggml_type, x, raw, False, monkeypatch)
        with monkeypatch.context() as m:
            m.setattr(gguf_readback, "_use_jit", True)
            out = gguf_readback._ChunkResult()
            got = (gguf_readback._check_block(x, raw, ggml_type, out, []), dataclasses.astuple(out))
            assert repr(got) == repr(numpy_result)  # repr: NaN statistics compare equal
    assert numpy_result[0] is None or value != 65520.0  # float16 65520 -> inf: numpy accepts the inf it computes

