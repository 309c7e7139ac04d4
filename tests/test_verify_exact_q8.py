"""Issue 21.4: the Q8_0 round trip checks the writer's very q, not only "within scale/2", without
quantizing every group again; and the compiled kernel (numba, for big models) gives the numpy
path's verdicts and statistics bit for bit. Every wrong byte fails, naming its tensor, on both."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
from helpers import DATA, ROOT, flipped_copy

from llama2bin.checks import q8_chunk, tensor
from llama2bin.checks.tensor import HIST_EDGES, TensorCheckResult, check_tensors
from llama2bin.cli import main
from llama2bin.formats.families import open_output
from llama2bin.formats.q8_0 import Scratch, quantize
from llama2bin.formats.reader import BinFile
from llama2bin.formats.source_registry import open_source
from llama2bin.sources.base import to_float32

sys.path.insert(0, os.path.join(ROOT, "bench"))
from synth import SHAPES, ensure  # noqa: E402

EDGES = np.array(HIST_EDGES)
HAS_NUMBA = q8_chunk.load_compiled()
PATHS = [False, pytest.param(True, marks=pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed"))]


def test_the_kernel_loads_wherever_numba_is_installed() -> None:
    """load_compiled() falls back to numpy when numba cannot work; that must not hide a kernel
    that stopped compiling (and the compiled-path tests below would then skip)."""
    assert HAS_NUMBA == (importlib.util.find_spec("numba") is not None)


def _check(out: str, kind: str, src: str, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> TensorCheckResult:
    """check_tensors in this process (threads=1), on the compiled kernel or on numpy."""
    monkeypatch.setattr(tensor, "COMPILED_KERNEL_MIN_WEIGHTS", 0 if compiled else 1 << 62)
    monkeypatch.setattr(q8_chunk, "compiled_loaded", lambda: compiled)  # loaded above: numpy only when asked
    with open_source(kind, src) as source, open_output(out) as output:
        return check_tensors(output, source, quiet=True, threads=1)


def _values(kind: str, n: int, gs: int, rng: np.random.Generator) -> np.ndarray:
    w = (rng.standard_normal(n) * 0.02).astype(np.float32)
    if kind == "zero groups":
        w.reshape(-1, gs)[::5] = 0
    elif kind == "bf16":  # 8-bit mantissas: exact rounding ties are common (~0.1% of values)
        w = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    elif kind == "subnormal scales":
        w *= np.float32(1e-38)
    elif kind == "wide range":
        w *= (10.0 ** rng.integers(-30, 30, n // gs)).astype(np.float32).repeat(gs)
    elif kind == "halves":  # every other value a tie
        w = rng.integers(-300, 300, n).astype(np.float32) / np.float32(2)
    return w


KINDS = ["normal", "zero groups", "bf16", "subnormal scales", "wide range", "halves"]


def _same(a: q8_chunk.ChunkStats, b: q8_chunk.ChunkStats) -> bool:
    return (a.bad_scale, a.wrong_q, a.sq_err, a.sq_ref, a.max_abs_err) == (
        b.bad_scale, b.wrong_q, b.sq_err, b.sq_ref, b.max_abs_err) and np.array_equal(a.hist, b.hist) and (
        a.gmax.tobytes() == b.gmax.tobytes())


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gs", [64, 32, 16])
def test_kernel_gives_the_numpy_paths_bits(kind: str, gs: int) -> None:
    from llama2bin.checks.q8_chunk_jit import chunk_stats_bits, chunk_stats_jit

    rng = np.random.default_rng(gs)
    for n in (gs, 5 * gs, 65536, 65536 + 7 * gs, 3 * 65536 - gs, 1 << 20):  # partial blocks, pairwise remainders
        w = _values(kind, n, gs, rng)
        q, s = quantize(w, gs)
        flipped_q = q.copy()
        flipped_q[n // 3] += 1 if q[n // 3] < 127 else -1
        flipped_s = s.copy()
        flipped_s[-1] = np.nextafter(s[-1], np.float32(1))
        for qq, ss in ((q, s), (flipped_q, s), (q, flipped_s), (flipped_q, flipped_s)):
            ref = q8_chunk.chunk_stats_numpy(w, qq, ss, gs, EDGES, Scratch())
            assert _same(ref, chunk_stats_jit(w, qq, ss, gs, EDGES)), (kind, gs, n)
        good = q8_chunk.chunk_stats_numpy(w, q, s, gs, EDGES, Scratch())
        assert good.bad_scale == good.wrong_q == -1
        assert q8_chunk.chunk_stats_numpy(w, flipped_q, s, gs, EDGES, Scratch()).wrong_q == n // 3
        # a scale error is reported first, wherever it is, as before
        assert q8_chunk.chunk_stats_numpy(w, flipped_q, flipped_s, gs, EDGES, Scratch()).bad_scale == s.size - 1
    # bfloat16 bits widened inside the kernel
    raw = (rng.standard_normal(1 << 18).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w = to_float32(raw.view(np.uint8), "BF16")
    q, s = quantize(w, gs)
    assert _same(q8_chunk.chunk_stats_numpy(w, q, s, gs, EDGES, Scratch()), chunk_stats_bits(raw, 16, q, s, gs, EDGES))


def test_every_tie_is_checked_exactly() -> None:
    """The q of a value exactly between two integers (w/s = k + 1/2) is the writer's rint, which
    the old "within scale/2 (+ slack)" bound could not tell from the other neighbour."""
    gs = 64
    w = _values("halves", 1 << 16, gs, np.random.default_rng(1))
    q, s = quantize(w, gs)
    t = w.reshape(-1, gs) / s[:, None]
    ties = np.flatnonzero(np.abs(t - np.trunc(t)).reshape(-1) == 0.5)
    assert ties.size > 10
    for i in ties[:50]:
        other = q.copy()
        other[i] += 1 if w[i] / s[i // gs] > q[i] else -1  # the other side of the tie
        assert not q8_chunk.beyond_half_scale(w, other, s, gs, int(i))  # within scale/2: the old check passed it
        assert q8_chunk.chunk_stats_numpy(w, other, s, gs, EDGES, Scratch()).wrong_q == i


@pytest.mark.parametrize("compiled", PATHS)
def test_the_paths_agree_on_good_files(compiled: bool, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The compiled path (mapped float32 .pt rows; bfloat16 safetensors rows widened in the
    kernel, HF's permuted wq/wk through read_rows) gives numpy's result, JSON for JSON."""
    hf = ensure(SHAPES["tiny-hf"], str(tmp_path / "cache"))
    cases = [(os.path.join(DATA, f"tiny_a.v{v}.bin"), "llama2c", os.path.join(DATA, "tiny_a.pt")) for v in (0, 1, 2)]
    cases.append((os.path.join(DATA, "tiny_b.v2.bin"), "llama2c", os.path.join(DATA, "tiny_b.pt")))
    for v in (1, 2):
        out = str(tmp_path / f"hf.v{v}.bin")
        assert main(["export", out, "--hf", hf, "--version", str(v), "--quiet"]) == 0
        cases.append((out, "hf", hf))
    for out, kind, src in cases:
        got = _check(out, kind, src, compiled, monkeypatch)
        assert got.passed, got.failures
        assert got.to_json() == _check(out, kind, src, False, monkeypatch).to_json()


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("version", [1, 2])
def test_a_flipped_byte_in_any_tensor_fails(compiled: bool, version: int, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path) -> None:
    """One flipped bit in the q, in a scale or in a float32 norm of every tensor: one failure,
    naming that tensor, the same message on both paths."""
    golden = os.path.join(DATA, f"tiny_a.v{version}.bin")
    ckpt = os.path.join(DATA, "tiny_a.pt")
    with BinFile(golden) as bf:
        sections = [(name, t.offset, t.numel, getattr(t, "scales_offset", None), t.group_size)
                    for name, t in bf.tensors.items()]
    rng = np.random.default_rng(version)
    for name, offset, numel, scales_offset, gs in sections:
        if scales_offset is None:  # float32
            element = int(rng.integers(numel))
            bad = flipped_copy(golden, str(tmp_path / "bad.bin"), offset + 4 * element + 2)
            want = f"tensor {name}: element {element} differs from the float32 source"
        else:
            element = int(rng.integers(numel))
            bad = flipped_copy(golden, str(tmp_path / "bad.bin"), offset + element)
            result = _check(bad, "llama2c", ckpt, compiled, monkeypatch)
            assert len(result.failures) == 1 and result.failures[0].startswith(f"tensor {name}: "), result.failures
            assert result.failures == _check(bad, "llama2c", ckpt, False, monkeypatch).failures
            group = int(rng.integers(numel // gs))
            bad = flipped_copy(golden, str(tmp_path / "bad.bin"), scales_offset + 4 * group + 1)
            want = f"tensor {name}: scale of group {group} differs from a fresh quantization"
        result = _check(bad, "llama2c", ckpt, compiled, monkeypatch)
        assert result.failures == [want]


@pytest.mark.parametrize("compiled", PATHS)
def test_a_q_in_an_all_zero_group_must_be_zero(compiled: bool, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """tiny_b's embedding row 3 is zero: scale 0, and any q dequantizes to 0 - yet the file must
    hold the writer's q, 0 (the old bound check passed any q there)."""
    golden = os.path.join(DATA, "tiny_b.v2.bin")
    with BinFile(golden) as bf:
        t = bf.tensors["tok_embeddings"]
        element = 3 * t.cols + 5
        assert not t.read_q8(3, 4)[1].any()
        bad = flipped_copy(golden, str(tmp_path / "bad.bin"), t.offset + element)
    result = _check(bad, "llama2c", os.path.join(DATA, "tiny_b.pt"), compiled, monkeypatch)
    assert result.failures == [f"tensor tok_embeddings: q of element {element} differs from a fresh quantization"]


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
def test_a_kernel_already_loaded_checks_any_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below the size rule, numpy checks, unless the kernel is loaded already (the job server loads
    it once for its workers): then the kernel checks even a tiny model, with numpy's result."""
    calls = []
    real = q8_chunk.stats_of_mapped_source

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(q8_chunk, "stats_of_mapped_source", counting)
    out, src = os.path.join(DATA, "tiny_a.v2.bin"), os.path.join(DATA, "tiny_a.pt")
    monkeypatch.setattr(tensor, "COMPILED_KERNEL_MIN_WEIGHTS", 1 << 62)
    with open_source("llama2c", src) as source, open_output(out) as output:
        loaded = check_tensors(output, source, quiet=True, threads=1)
    assert q8_chunk.compiled_loaded() and calls  # HAS_NUMBA loaded it at import
    calls.clear()
    assert loaded.to_json() == _check(out, "llama2c", src, False, monkeypatch).to_json() and not calls
