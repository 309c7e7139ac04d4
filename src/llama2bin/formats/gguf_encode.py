"""float32 values -> the bytes of a GGUF tensor: F32, F16, BF16 and ggml's Q8_0, bit-exact.

The references, and what each encoder computes:

- F16: `convert_hf_to_gguf.py` writes `data.astype(np.float16)`: IEEE round to nearest even; here
  by integer arithmetic on the bit patterns, equal to numpy's cast for every finite float32
  below 65520 (`f16_bits_into`). |x| >= 65520 would become inf: refused.
- BF16: gguf-py's `quants.BF16` (= ggml_compute_fp32_to_bf16): the upper 16 bits of
  `bits + 0x7FFF + ((bits >> 16) & 1)` (round to nearest even), a NaN made quiet by
  `(bits & 0xFFFF0000) | 0x00400000`. |x| >= 0x7F7F8000's value would round to inf: refused.
- Q8_0 (block_q8_0, 34 bytes per 32 values): `d = amax / 127` in float32, stored as float16;
  `q = roundf(x * id)` with `id = 1/d` (0 when d is 0) in float32 - multiplication by the float32
  reciprocal, not division, and the *float32* d, not the stored float16 one, exactly as
  ggml-quants.c `quantize_row_q8_0_ref` and gguf-py `quants.Q8_0` compute it. roundf rounds half
  away from zero. Two corner cases are defined by what both references produce on x86: when 1/d
  overflows (amax below ~3.7e-37, all-subnormal blocks) x*id is inf or NaN and both cast it to
  int8 0, so q = 0 here (and the float16 d is 0 anyway); when amax/127 rounds to float16 inf
  (amax >= 65520 * 127) both write an inf scale - a file that computes inf - so it is refused.

Why not call gguf.quants: it costs ~10 CPU s per 1.1B weights (np_roundf's five temporaries per
element). Here every step runs in place in reused buffers, block by block (BLOCK_ELEMS values,
256 KiB, so temporaries stay in L2), six passes for Q8_0: abs+max per group on the bit patterns
(q8_0.group_absmax_bits), x * id, copysign, add, truncating cast into the interleaved output.
roundf(t) is computed as trunc(t + copysign(0.49999997, t)): 0.49999997 (the float below 0.5)
makes the sum round the right way at every tie and near-tie; checked against gguf-py's np_roundf
for every float32 in [0, 2^23) (tests check ties and random blocks; |t| <= 127.x here).

Big exports (the .bin quantizer's size rule, q8_fast.wanted) run F16 and Q8_0 through compiled
versions of these steps instead (gguf_kernel.py: the same bytes, 1.7-5x less CPU); a value they
refuse is handed back to the numpy encoder, whose message names it.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np

from ..errors import Llama2binError
from ..sources.gguf_file import BLOCK, Q8_0_BLOCK, GgmlType
from . import q8_fast
from .q8_0 import Scratch

BLOCK_ELEMS = 1 << 16  # values per step: a multiple of 32 (whole Q8_0 blocks)
assert BLOCK_ELEMS % Q8_0_BLOCK == 0

_INF_BITS = np.uint32(0x7F800000)
_ABS = np.uint32(0x7FFFFFFF)
_F16_OVERFLOW = np.float32(65520.0)  # the tie between 65504 and 2^16: rounds to inf (even)
_BF16_OVERFLOW_BITS = np.uint32(0x7F7F8000)  # likewise for bfloat16's largest value
_HALF_DOWN = np.float32(np.nextafter(np.float32(0.5), np.float32(0)))  # 0.49999997
_Q8_MAX = np.float32(127.0)
_D_OVERFLOW = np.float32(65520.0)  # a float32 d >= this is inf as float16


# The compiled encoders (gguf_kernel.py, numba): once loaded into this process, and whether the
# export about to run uses them (`prepare`, before its workers fork, as for the .bin quantizer).
_kernel: ModuleType | None = None
_use = False


def prepare(elements: int) -> bool:
    """Decide how the GGUF export about to run encodes `elements` Q8_0/F16 values: compiled when
    q8_fast's rule says so (the same size rule and LLAMA2BIN_Q8_KERNEL switch) and numba loads,
    else numpy (the same bytes). Returns whether the kernel is used."""
    global _use
    _use = q8_fast.wanted(elements, loaded=_kernel is not None) and load()
    return _use


def load() -> bool:
    """Load the compiled encoders into this process (the job server does at start); False without numba."""
    global _kernel
    if _kernel is None:
        _kernel = q8_fast.import_compiled(__package__ + ".gguf_kernel", _warm_up)
    return _kernel is not None


def _warm_up(kernel: ModuleType) -> None:
    bits = np.zeros(32, np.uint32)
    kernel.encode_q8_0(bits, np.empty(34, np.uint8))
    kernel.encode_f16(bits, np.empty(32, np.uint16))


def encoded_nbytes(ggml_type: GgmlType, count: int) -> int:
    """Bytes that `count` values (whole blocks) take when encoded as `ggml_type`."""
    elems, nbytes = BLOCK[ggml_type]
    assert count % elems == 0, f"{count} values are not whole {ggml_type.name} blocks"
    return count // elems * nbytes


def encode_into(ggml_type: GgmlType, values: np.ndarray, out: np.ndarray, scratch: Scratch, what: str) -> np.ndarray:
    """`values` (flat float32, whole blocks) encoded as `ggml_type` into `out` (a flat uint8
    buffer of at least encoded_nbytes); returns the encoded bytes (a view of `out`, or of
    `values` itself for F32). `what` names the tensor in refusals: NaN or Inf, and values the
    type would turn into inf."""
    n = encoded_nbytes(ggml_type, values.size)
    if ggml_type == GgmlType.F32:
        _check_finite(values, scratch, what)
        return values.view(np.uint8)
    dst = out[:n]
    compiled = _use and _kernel is not None and values.flags.c_contiguous
    if ggml_type == GgmlType.F16:
        # a value the compiled pass refuses: numpy's pass over the same values says which and why
        if not compiled or _kernel.encode_f16(values.view(np.uint32), dst.view(np.uint16)) < 0:
            _encode_f16(values, dst.view(np.float16), scratch, what)
    elif ggml_type == GgmlType.BF16:
        _encode_bf16(values, dst.view(np.uint16), scratch, what)
    elif ggml_type == GgmlType.Q8_0:
        if not compiled or _kernel.encode_q8_0(values.view(np.uint32), dst) < 0:
            _encode_q8_0(values, dst.reshape(-1, 34), scratch, what)
    else:
        raise ValueError(f"no encoder for {ggml_type!r}")
    return dst


def _block_absmax_bits(blk: np.ndarray, scratch: Scratch) -> int:
    """max |x| of a block as float32 bit pattern (>= 0x7F800000: an Inf or a NaN is there)."""
    bits = scratch.get("gguf_bits", blk.size, np.uint32)
    np.bitwise_and(blk.view(np.uint32), _ABS, out=bits)
    return int(bits.max()) if bits.size else 0


def _check_finite(values: np.ndarray, scratch: Scratch, what: str) -> None:
    for start in range(0, values.size, BLOCK_ELEMS):
        if _block_absmax_bits(values[start : start + BLOCK_ELEMS], scratch) >= _INF_BITS:
            raise Llama2binError(f"{what} contains NaN or Inf")


def _encode_f16(values: np.ndarray, out: np.ndarray, scratch: Scratch, what: str) -> None:
    for start in range(0, values.size, BLOCK_ELEMS):
        blk = values[start : start + BLOCK_ELEMS]
        amax = np.uint32(_block_absmax_bits(blk, scratch))
        if amax >= _INF_BITS:
            raise Llama2binError(f"{what} contains NaN or Inf")
        if amax.view(np.float32) >= _F16_OVERFLOW:
            raise Llama2binError(
                f"{what} holds {float(amax.view(np.float32)):g}, beyond float16's range (65504): "
                "it would become inf; write bf16 or f32 instead"
            )
        f16_bits_into(blk.view(np.uint32), out[start : start + blk.size].view(np.uint16), scratch)


def f16_bits_into(bits: np.ndarray, out: np.ndarray, scratch: Scratch) -> None:
    """float32 bit patterns -> float16 bit patterns, round to nearest even: numpy's astype(float16)
    for every finite |x| < 65520 (checked for all 2^31 such patterns while developing; the tests
    check ties, subnormals and random patterns). numpy's cast is a scalar routine (2.0 CPU s per
    1.1B values here); this is 13 vectorised passes (1.2 s):
    - normal results: the rounded float16 exponent and mantissa are the top bits of
      |bits| + 0xFFF + (bit 13), shifted right by 13, rebiased by (127 - 15) << 10 (a carry out of
      the mantissa rightly bumps the exponent);
    - below 2^-14 (float16 subnormals and zero): |x| + 0.5 in float32 rounds |x| to a multiple
      of 2^-24, float16's subnormal step, in hardware (RNE), and the low bits are the result."""
    a = scratch.get("f16_a", bits.size, np.uint32)
    t = scratch.get("f16_t", bits.size, np.uint32)
    np.bitwise_and(bits, _ABS, out=a)
    np.right_shift(a, 13, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, a, out=t)
    np.add(t, 0xFFF, out=t)
    np.right_shift(t, 13, out=t)
    np.subtract(t, (127 - 15) << 10, out=t)  # wraps below 2^-14: those are replaced next
    tiny = np.flatnonzero(a < np.uint32(0x38800000))
    if tiny.size:
        t[tiny] = (a[tiny].view(np.float32) + np.float32(0.5)).view(np.uint32) - np.uint32(0x3F000000)
    np.right_shift(bits, 16, out=a)
    np.bitwise_and(a, 0x8000, out=a)
    np.bitwise_or(t, a, out=t)
    np.copyto(out, t, casting="unsafe")


def bf16_bits_into(bits: np.ndarray, out: np.ndarray, scratch: Scratch, nan_possible: bool = True) -> None:
    """gguf-py's float32 -> bfloat16 on bit patterns (uint32 in, uint16 out), NaN rule included
    (`nan_possible=False` skips looking for NaN when the caller has ruled it out)."""
    t = scratch.get("gguf_bf16", bits.size, np.uint32)
    np.right_shift(bits, 16, out=t)
    np.bitwise_and(t, 1, out=t)
    np.add(t, 0x7FFF, out=t)
    np.add(t, bits, out=t)  # no wrap-around: only NaN patterns are >= 0xFFFF8000, handled below
    nan = (bits & _ABS) > _INF_BITS if nan_possible else None
    if nan is not None and nan.any():  # "force nan to quiet": keep sign and top mantissa bits, set the quiet bit
        t[nan] = (bits[nan] & np.uint32(0xFFFF0000)) | np.uint32(64 << 16)
    np.copyto(out, t.view(np.uint16)[1::2])  # little-endian: the upper halves, i.e. t >> 16


def _encode_bf16(values: np.ndarray, out: np.ndarray, scratch: Scratch, what: str) -> None:
    for start in range(0, values.size, BLOCK_ELEMS):
        blk = values[start : start + BLOCK_ELEMS]
        amax = _block_absmax_bits(blk, scratch)
        if amax >= _INF_BITS:
            raise Llama2binError(f"{what} contains NaN or Inf")
        if amax >= _BF16_OVERFLOW_BITS:
            raise Llama2binError(f"{what} holds a value beyond bfloat16's range: it would become inf")
        bf16_bits_into(blk.view(np.uint32), out[start : start + blk.size], scratch, nan_possible=False)


def _group_absmax_bits(blk: np.ndarray, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """Bit patterns of max |x| per block of 32 (uint32; as floats, np.abs(x).max(axis=1) exactly).

    With maximum.reduceat over the block starts: numpy's max(axis=1) over (n_blocks, 32) runs one
    short inner loop per block (measured 1.5 CPU s per 1.1B values, 0.5 s this way)."""
    nb = blk.size // Q8_0_BLOCK
    bits = scratch.get("gguf_bits", blk.size, np.uint32)
    np.bitwise_and(blk.view(np.uint32), _ABS, out=bits)
    return np.maximum.reduceat(bits, _block_starts(nb), out=out)


@functools.lru_cache(maxsize=4)
def _block_starts(n_blocks: int) -> np.ndarray:
    starts = np.arange(n_blocks, dtype=np.intp) * Q8_0_BLOCK
    starts.flags.writeable = False
    return starts


def _encode_q8_0(values: np.ndarray, out: np.ndarray, scratch: Scratch, what: str) -> None:
    """out: (n_blocks, 34) uint8, each row a block_q8_0 (float16 d, 32 int8 q)."""
    for start in range(0, values.size, BLOCK_ELEMS):
        blk = values[start : start + BLOCK_ELEMS]
        nb = blk.size // Q8_0_BLOCK
        rows = out[start // Q8_0_BLOCK : start // Q8_0_BLOCK + nb]
        d = scratch.get("gguf_d", nb, np.float32)
        amax_bits = _group_absmax_bits(blk, d.view(np.uint32), scratch)
        if amax_bits.max() >= _INF_BITS:
            raise Llama2binError(f"{what} contains NaN or Inf")
        np.divide(d, _Q8_MAX, out=d)  # d held amax's bits, i.e. amax as float32; now d = amax / 127
        if d.max() >= _D_OVERFLOW:
            worst = int(np.argmax(d))
            raise Llama2binError(
                f"{what}: a Q8_0 block (values {start + worst * Q8_0_BLOCK}..) has max |w| = {float(d[worst]) * 127:g}: "
                "its scale amax/127 overflows float16 (limit 65504 * 127); llama.cpp would compute inf - write bf16 or f32"
            )
        ident = scratch.get("gguf_id", nb, np.float32)
        with np.errstate(divide="ignore", over="ignore"):
            np.divide(np.float32(1), d, out=ident)  # 1/0 -> inf, 1/subnormal may overflow -> inf
        ident[np.isinf(ident)] = 0  # both references end with q = 0 there (see module docstring)
        np.copyto(rows[:, 0:2].view(np.float16)[:, 0], d, casting="same_kind")  # float16 d: RNE, as ggml's
        # t = x * id, each block by its own id (a flat multiply by the repeated ids is faster
        # than numpy's broadcast over (n_blocks, 32))
        t = scratch.get("gguf_t", blk.size, np.float32)
        np.copyto(t.reshape(nb, Q8_0_BLOCK), ident[:, None])
        np.multiply(blk, t, out=t)
        # roundf(t) = trunc(t + copysign(0.49999997, t)); copysign on the bit patterns
        half = scratch.get("gguf_half", blk.size, np.uint32)
        np.bitwise_and(t.view(np.uint32), np.uint32(0x80000000), out=half)
        np.bitwise_or(half, _HALF_DOWN.view(np.uint32), out=half)
        np.add(t, half.view(np.float32), out=t)
        np.copyto(rows[:, 2:].view(np.int8), t.reshape(nb, Q8_0_BLOCK), casting="unsafe")  # truncating cast


def decode_q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 d per block, int8 q (n_blocks, 32)) of Q8_0 bytes (n_blocks * 34, uint8)."""
    rows = blocks.reshape(-1, 34)
    d = np.ascontiguousarray(rows[:, 0:2]).view("<f2").reshape(-1).astype(np.float32)
    q = np.ascontiguousarray(rows[:, 2:]).view(np.int8)
    return d, q
