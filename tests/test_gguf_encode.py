"""GGUF tensor encoders (formats/gguf_encode.py) against llama.cpp's gguf-py, bit for bit.

gguf.quants is the reference (it is bit-exact with ggml-quants.c; test_gguf_llamacpp.py also
checks our Q8_0 against llama.cpp's own C quantizer). Blocks: random, trained weights, all
zero, tiny and huge magnitudes, subnormal, exact rounding ties, and the refused cases (trained
weights: test_gguf_trained.py).
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from llama2bin.errors import Llama2binError
from llama2bin.formats import gguf_encode, q8_fast
from llama2bin.formats.gguf_encode import BLOCK_ELEMS, bf16_bits_into, decode_q8_0, encode_into, encoded_nbytes
from llama2bin.formats.q8_0 import Scratch
from llama2bin.sources.gguf_file import GgmlType

REFERENCE = {GgmlType.F32: Q.F32, GgmlType.F16: Q.F16, GgmlType.BF16: Q.BF16, GgmlType.Q8_0: Q.Q8_0}
HAVE_NUMBA = importlib.util.find_spec("numba") is not None


@pytest.fixture(autouse=True, params=["numpy", "numba"])
def encoder(request, monkeypatch):
    """Every test runs with both encoders: the numpy passes and the compiled ones (gguf_kernel.py),
    each against gguf-py; the process-wide choice is restored afterwards."""
    if request.param == "numba" and not HAVE_NUMBA:
        pytest.skip("numba is not installed")
    monkeypatch.setenv(q8_fast.ENV_SWITCH, request.param)
    monkeypatch.setattr(gguf_encode, "_use", False)
    assert gguf_encode.prepare(0) == (request.param == "numba")
    return request.param


def ours(ggml_type: GgmlType, x: np.ndarray) -> bytes:
    out = np.empty(encoded_nbytes(ggml_type, x.size), dtype=np.uint8)
    return encode_into(ggml_type, np.ascontiguousarray(x, dtype=np.float32).reshape(-1), out, Scratch(), "t").tobytes()


def reference(ggml_type: GgmlType, x: np.ndarray) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gguf-py's divide-by-zero and invalid-cast warnings
        return quants.quantize(np.asarray(x, dtype=np.float32), REFERENCE[ggml_type]).tobytes()


def blocks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cases = {
        "normal": rng.standard_normal((48, 256)),
        "weights_scale": rng.standard_normal((64, 288)) * 0.02,  # stories15M's dim; several 64Ki steps
        "all_zero": np.zeros((4, 64)),
        "some_zero_blocks": np.where(np.arange(512).reshape(8, 64) // 32 % 2, rng.standard_normal((8, 64)), 0.0),
        "tiny": rng.standard_normal((8, 64)) * 1e-30,
        "huge": rng.standard_normal((8, 64)) * 1e4,  # amax/127 ~ 3e2: fits float16
        "subnormal": rng.standard_normal((8, 64)) * 1e-39,  # 1/d overflows: q = 0 in both references
        "min_subnormal": np.full((2, 64), 1.4e-45) * rng.choice([-1, 1], (2, 64)),
        "near_subnormal_d": rng.standard_normal((8, 64)) * 1e-36,  # d subnormal, 1/d finite
        "one_outlier": np.concatenate([np.full((4, 31), 0.01), np.full((4, 1), 20.0)], axis=1),
        "negative_max": -np.abs(rng.standard_normal((4, 64))),
    }
    # rounding ties: amax 127 makes d = 1 and id = 1, so x * id = x hits every k/2 exactly
    ties = (np.arange(-127 * 2, 127 * 2 + 1) / 2.0)[: 31 * 16].reshape(16, 31)
    cases["ties"] = np.concatenate([np.full((16, 1), 127.0), ties], axis=1)
    cases["odd_length_rows"] = rng.standard_normal((3, 96))
    # just below a tie: roundf(0.49999997) is 0, where adding 0.5 and truncating would give 1
    below = np.nextafter((np.arange(31) - 15 + 0.5).astype(np.float32), np.float32(0))
    cases["near_ties"] = np.concatenate([np.full((1, 1), 127.0), below[None, :]], axis=1)
    cases["reciprocal_not_quotient"] = _reciprocal_cases()
    return {k: v.astype(np.float32) for k, v in cases.items()}


def _reciprocal_cases() -> np.ndarray:
    """Blocks whose q depends on computing id as 1 / (amax / 127), as ggml does, rather than
    127 / amax (they differ in the last bit for ~1 amax in 4): each block is its amax, then values
    that land on either side of a tie depending on which."""
    half = np.nextafter(np.float32(0.5), np.float32(0))
    rows = []
    for amax in np.random.default_rng(5).uniform(0.01, 10, 400).astype(np.float32):
        ident, other = np.float32(1) / (amax / np.float32(127)), np.float32(127) / amax
        if ident == other:
            continue
        x = np.float32((np.arange(127) + 0.5) / ident)
        x = np.concatenate([np.nextafter(x, np.float32(0)), x, np.nextafter(x, np.float32(np.inf))])
        x = x[(x <= amax) & (np.trunc(x * ident + half) != np.trunc(x * other + half))][:31]
        if x.size == 31:
            rows.append(np.concatenate([[amax], x]))
        if len(rows) == 4:
            break
    assert len(rows) == 4
    return np.array(rows)


@pytest.mark.parametrize("ggml_type", list(GgmlType), ids=lambda t: t.name)
@pytest.mark.parametrize("case", list(blocks()))
def test_encoders_equal_gguf_py(case: str, ggml_type: GgmlType) -> None:
    x = blocks()[case]
    if ggml_type == GgmlType.F16 and np.abs(x).max() >= 65520:
        pytest.skip("beyond float16: refused (test_float16_overflow_is_refused)")
    assert ours(ggml_type, x) == reference(ggml_type, x)


def test_q8_0_layout_and_decoding() -> None:
    """34-byte blocks: float16 d (amax/127), then 32 int8 q; decoded values within the bound."""
    x = blocks()["normal"]
    raw = np.frombuffer(ours(GgmlType.Q8_0, x), dtype=np.uint8)
    d, q = decode_q8_0(raw)
    groups = x.reshape(-1, 32)
    assert np.array_equal(d, (np.abs(groups).max(axis=1) / np.float32(127)).astype(np.float16).astype(np.float32))
    assert np.abs(q).max() == 127
    err = np.abs(q * d[:, None] - groups)
    assert (err <= d[:, None] * 0.57).all()  # d/2 plus |q| * |d32 - d16| (see checks/gguf_readback.py)


def test_q8_0_scale_overflowing_float16_is_refused() -> None:
    """amax/127 beyond float16: gguf-py and ggml write an inf scale (a model computing inf)."""
    x = np.full((1, 32), 1e7, dtype=np.float32)
    assert reference(GgmlType.Q8_0, x)[:2] == np.float16(np.inf).tobytes()  # what the references do
    with pytest.raises(Llama2binError, match="overflows float16"):
        ours(GgmlType.Q8_0, x)
    ok = np.full((1, 32), 65504 * 127 * 0.999, dtype=np.float32)  # the largest that still fits
    assert ours(GgmlType.Q8_0, ok) == reference(GgmlType.Q8_0, ok)


def test_float16_overflow_is_refused() -> None:
    assert ours(GgmlType.F16, np.full(4, 65519.0)) == reference(GgmlType.F16, np.full(4, 65519.0))  # rounds to 65504
    with pytest.raises(Llama2binError, match="beyond float16's range"):
        ours(GgmlType.F16, np.array([1.0, 65520.0, 0.0, 0.0]))


def test_bfloat16_overflow_is_refused() -> None:
    top = np.array([np.float32(np.uint32(0x7F7F7FFF).view(np.float32))])  # rounds down to bf16 max
    assert ours(GgmlType.BF16, top) == reference(GgmlType.BF16, top)
    with pytest.raises(Llama2binError, match="bfloat16's range"):
        ours(GgmlType.BF16, np.array([np.float32(np.uint32(0x7F7F8000).view(np.float32))]))


@pytest.mark.parametrize("ggml_type", list(GgmlType), ids=lambda t: t.name)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(ggml_type: GgmlType, bad: float) -> None:
    x = np.zeros(BLOCK_ELEMS + 64, dtype=np.float32)
    x[BLOCK_ELEMS + 3] = bad  # in the second step of the block loop
    with pytest.raises(Llama2binError, match="NaN or Inf"):
        ours(ggml_type, x)


def test_bf16_nan_rule_equals_gguf_py() -> None:
    """The exact conversion keeps gguf-py's quiet-NaN rule (the writer refuses NaN anyway)."""
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FFFFFFF, 0x7F800000, 0x3F800000, 0x00000001],
                    dtype=np.uint32)
    out = np.empty(bits.size, dtype=np.uint16)
    bf16_bits_into(bits, out, Scratch())
    assert out.tobytes() == reference(GgmlType.BF16, bits.view(np.float32))


def test_random_bit_patterns_of_all_magnitudes() -> None:
    """Finite float32 patterns drawn from the whole range, for F16 (in range), BF16 and Q8_0."""
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 0x7F800000, 1 << 16, dtype=np.uint32) | (rng.integers(0, 2, 1 << 16, dtype=np.uint32) << 31)
    x = bits.view(np.float32)
    x16 = np.where(np.abs(x) < 65504, x, np.float32(1.0))
    assert ours(GgmlType.F16, x16) == reference(GgmlType.F16, x16)
    assert ours(GgmlType.BF16, x) == reference(GgmlType.BF16, x)
    per_block = np.abs(x).reshape(-1, 32).max(axis=1) / 127
    fits = np.repeat(per_block < 65504, 32)
    xq = np.where(fits, x, np.float32(0))
    assert ours(GgmlType.Q8_0, xq) == reference(GgmlType.Q8_0, xq)


def test_float16_bit_arithmetic_equals_numpys_cast() -> None:
    """f16_bits_into against numpy's astype(float16): a strided sweep of every finite float32 below
    65520 (all 1.2 billion were compared once while developing: 0 differ), both signs, plus the
    edges - float16's smallest subnormal and normal, their halfway points, the largest value."""
    from llama2bin.formats.gguf_encode import f16_bits_into

    sweep = np.arange(0, 0x477FF000, 1009, dtype=np.uint32)
    edges = np.array([0x33000000, 0x33000001, 0x32FFFFFF, 0x387FC000, 0x387FE000, 0x38800000, 0x387FFFFF,
                      0x477FE000, 0x477FEFFF, 0x3F800000, 0x3F801000, 0x3F803000, 0x00000001, 0x007FFFFF], dtype=np.uint32)
    for bits in (sweep, sweep | np.uint32(0x80000000), edges, edges | np.uint32(0x80000000)):
        out = np.empty(bits.size, np.uint16)
        f16_bits_into(bits, out, Scratch())
        assert np.array_equal(out, bits.view(np.float32).astype(np.float16).view(np.uint16))
