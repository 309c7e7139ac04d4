"""v0's rotary tables: built in chunks (issue 14.4) yet bit-identical, at the model's rope_theta
when --allow-rope-theta accepts one (issue 12.4), and without torch, bit for bit as torch computes
them (issue 21.2; bench/rope_sweep.py is the exhaustive version of these samples)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from conftest import assert_refused
from helpers import DATA
from llama_checkpoints import Spec, hf_model, run, save_hf

from llama2bin import torch_cpu_math, torch_cpu_trig
from llama2bin.formats.reader import BinFile
from llama2bin.formats.rope import ROPE_CHUNK_ROWS, rope_chunks, rope_tables, tables
from llama2bin.rope_freqs import default_inv_freq


def _whole(head_size: int, seq_len: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """One torch call over the whole table: what the seed (and llama2bin before chunking) computed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f = 1.0 / (theta ** (torch.arange(0, head_size, 2)[: (head_size // 2)].float() / head_size))
        angles = torch.outer(torch.arange(seq_len), f).float()
        return torch.cos(angles).numpy(), torch.sin(angles).numpy()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("head_size", "seq_len", "chunk_rows"), [
    (8, 16, 3), (6, 37, 5), (64, 2 * ROPE_CHUNK_ROWS + 77, ROPE_CHUNK_ROWS), (128, 300, 64), (2, 10, 1)])
def test_chunked_tables_equal_the_whole_table_bit_for_bit(head_size, seq_len, chunk_rows):
    for theta in (10000.0, 500000.0):
        want_cos, want_sin = _whole(head_size, seq_len, theta)
        rows = [(start, c, s) for start, c, s in rope_chunks(head_size, seq_len, theta, chunk_rows=chunk_rows)]
        assert [start for start, _, _ in rows] == list(range(0, seq_len, chunk_rows))
        cos = np.concatenate([c for _, c, _ in rows])
        sin = np.concatenate([s for _, _, s in rows])
        assert np.array_equal(cos.view(np.uint32), want_cos.view(np.uint32))
        assert np.array_equal(sin.view(np.uint32), want_sin.view(np.uint32))


def test_rope_theta_500000_reaches_the_v0_tables(tmp_path, capsys):
    spec = Spec(n_kv_heads=2, rope_theta=500000.0, seed=7)
    src = save_hf(hf_model(spec), str(tmp_path / "src"))
    out = str(tmp_path / "m.v0.bin")
    rc, _, err = run(["export", out, "--hf", src, "--allow-rope-theta", "--quiet"], capsys)
    assert rc == 0, err
    hd, seq = spec.head_size, spec.max_pos
    # independent: float64 numpy of llama2.c's formula; torch's float32 differs by rounding only
    freqs = 500000.0 ** (-np.arange(0, hd, 2)[: hd // 2] / hd)
    angles = np.outer(np.arange(seq), freqs)
    with BinFile(out) as bf:
        cos = bf.tensors["freqs_cos"].read_all()
        sin = bf.tensors["freqs_sin"].read_all()
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-5, rtol=0)
    np.testing.assert_allclose(sin, np.sin(angles), atol=1e-5, rtol=0)
    at_10000, _ = rope_tables(hd, seq)
    assert np.abs(cos - at_10000).max() > 0.1  # the base really changed the table

    record = tmp_path / "v.json"
    rc, _, err = run(["verify", out, "--hf", src, "--allow-rope-theta", "--json", str(record), "--quiet",
                      "--no-functional"], capsys)
    assert rc == 0, err
    rope = json.loads(record.read_text())["rope_tables"]
    assert rope["theta"] == 500000.0 and not rope["all_readers_agree"]
    assert rope["ignored_by"][0] == "llama2.c run.c" and "tairov/llama2.mojo" in rope["read_from_table_by"]
    reports = tmp_path / "reports"
    assert run(["report", str(record), "--model", "m", "--out-dir", str(reports), "--no-plots"], capsys)[0] == 0
    (md,) = [p for p in reports.iterdir() if p.name.endswith(".md")]
    assert "rope tables at rope_theta 500000: right for readers that use them (tairov/llama2.mojo" in md.read_text()
    # checked against the default base (the same model with rope_theta 10000), the tables fail
    plain = save_hf(hf_model(Spec(n_kv_heads=2, seed=7)), str(tmp_path / "plain"))
    rc, _, err = run(["verify", out, "--hf", plain, "--quiet", "--no-functional"], capsys)
    assert rc == 1 and "freqs_cos: rotary table differs from llama2.c's at rope_theta 10000" in err


def test_a_v0_source_states_its_rope_theta_through_its_tables(tmp_path, capsys):
    spec = Spec(rope_theta=500000.0, seed=8)
    src = save_hf(hf_model(spec), str(tmp_path / "src"))
    first = str(tmp_path / "a.v0.bin")
    assert run(["export", first, "--hf", src, "--allow-rope-theta", "--quiet"], capsys)[0] == 0
    again = str(tmp_path / "b.v0.bin")
    rc, _, err = run(["export", again, "--bin", first], capsys)  # never silently rewritten at 10000
    assert rc == 1 and "rope_theta = 500000" in err and "--allow-rope-theta" in err and not os.path.exists(again)
    assert run(["export", again, "--bin", first, "--allow-rope-theta", "--quiet"], capsys)[0] == 0
    with open(first, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()

    with open(first, "r+b") as f:  # a table of no base at all
        with BinFile(first) as bf:
            f.seek(bf.tensors["freqs_sin"].offset + 4 * 9)
        f.write(np.float32(0.5).tobytes())
    rc, _, err = run(["export", str(tmp_path / "c.v0.bin"), "--bin", first, "--allow-rope-theta"], capsys)
    assert rc == 1 and "not llama2.c's rotary tables" in err


# ---- torch-free tables (issue 21.2): torch_cpu_math against torch itself ----

HEAD_SIZES = (32, 48, 64, 80, 96, 128, 256)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _torch_one_thread():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return torch, threads


def test_default_inv_freq_is_torch_s_for_every_head_size_and_common_bases():
    """SLEEF's powf for ATen's whole 32-element steps, libm's for the tail: every even head size up to
    320 and a few odd ones (bench/rope_sweep.py: 1..4096, 15 bases)."""
    torch, threads = _torch_one_thread()
    try:
        for theta in (10000.0, 500000.0, 1e6, 123456.7):
            for hd in (1, 3, 65, 97, *range(2, 321, 2)):
                want = 1.0 / (theta ** (torch.arange(0, hd, 2)[: (hd // 2)].float() / hd))
                assert np.array_equal(_bits(default_inv_freq(theta, hd)), _bits(want.numpy())), (theta, hd)
    finally:
        torch.set_num_threads(threads)


def test_sleef_powf_matches_torch_pow_on_random_inputs():
    torch, threads = _torch_one_thread()
    rng = np.random.default_rng(21)
    x = np.concatenate([rng.integers(0x00800000, 0x7F800000, 1 << 15, dtype=np.uint32).view(np.float32),
                        rng.uniform(1, 1e7, 1 << 15).astype(np.float32)])
    y = rng.uniform(-4, 4, x.size).astype(np.float32)
    try:
        want = torch.pow(torch.from_numpy(x), torch.from_numpy(y)).numpy()  # 65536 elements: all SLEEF
    finally:
        torch.set_num_threads(threads)
    with np.errstate(over="ignore"):
        got = torch_cpu_math.sleef_powf_u10(x, y)
    assert np.array_equal(_bits(got), _bits(want))


def test_fma32_rounds_once():
    """Against exact rational arithmetic, including products cancelled by their own rounding."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal(3000).astype(np.float32)
    b = rng.standard_normal(3000).astype(np.float32)
    c = np.concatenate([-(a[:1000] * b[:1000]), rng.standard_normal(1000).astype(np.float32) * np.float32(1e-7),
                        rng.standard_normal(1000).astype(np.float32)])
    got = torch_cpu_math.fma32(a, b, c)
    for i in range(a.size):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        g = np.float32(got[i])
        nearer = [np.nextafter(g, np.float32(-np.inf)), np.nextafter(g, np.float32(np.inf))]
        err = abs(Fraction(float(g)) - exact)
        assert all(err < abs(Fraction(float(n)) - exact) or (err == abs(Fraction(float(n)) - exact) and
                                                               int(g.view(np.uint32)) % 2 == 0) for n in nearer), i


def test_cos_sin_match_torch_on_random_angles():
    torch, threads = _torch_one_thread()
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(0, 131072, 1 << 21).astype(np.float32),
                        rng.integers(0, 0x7F800000, 1 << 20, dtype=np.uint32).view(np.float32)])
    try:
        want_cos, want_sin = torch.cos(torch.from_numpy(x)).numpy(), torch.sin(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)
    for piece in (slice(0, None), slice(3, 4099), slice(77777, 77778)):  # odd offsets and lengths
        cos, sin = torch_cpu_trig.torch_cos_sin(x[piece])
        assert np.array_equal(_bits(cos), _bits(want_cos[piece])) and np.array_equal(_bits(sin), _bits(want_sin[piece]))


def test_known_answers_are_torch_s_and_tell_mkl_versions_apart():
    torch, threads = _torch_one_thread()
    x = np.array([a for a, _, _ in torch_cpu_trig._KNOWN_ANSWERS], dtype=np.uint32).view(np.float32)
    try:
        cos, sin = torch.cos(torch.from_numpy(x)).numpy(), torch.sin(torch.from_numpy(x)).numpy()
    finally:
        torch.set_num_threads(threads)
    assert _bits(cos).tolist() == [c for _, c, _ in torch_cpu_trig._KNOWN_ANSWERS]
    assert _bits(sin).tolist() == [s for _, _, s in torch_cpu_trig._KNOWN_ANSWERS]
    # each is an input where torch is not correctly rounded (so a correctly rounded library fails them)
    rounded = np.cos(x.astype(np.float64)).astype(np.float32), np.sin(x.astype(np.float64)).astype(np.float32)
    assert np.all((_bits(cos) != _bits(rounded[0])) | (_bits(sin) != _bits(rounded[1])))


def _scaled(kind: str, hd: int, theta: float) -> np.ndarray:
    """Scaled inverse frequencies as transformers computes them (what issue 19 passes in)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": kind, "rope_theta": theta, "factor": 8.0}
    if kind == "llama3":
        params |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=4 * hd, num_attention_heads=4, num_key_value_heads=4, head_dim=hd,
                      rope_parameters=params, max_position_embeddings=131072)
    return ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")[0].numpy()


@pytest.mark.parametrize("hd", HEAD_SIZES)
def test_tables_match_torch_at_the_shapes_people_use(hd):
    """Rows 0..1023 and rows sampled up to 131071, theta 10000 and 500000, unscaled and scaled."""
    torch, threads = _torch_one_thread()
    rng = np.random.default_rng(hd)
    positions = np.concatenate([np.arange(1024), np.arange(131072 - 256, 131072),
                                np.sort(rng.integers(1024, 131072 - 256, 512))]).astype(np.int64)
    try:
        for theta in (10000.0, 500000.0):
            for f in (default_inv_freq(theta, hd), _scaled("llama3", hd, theta), _scaled("linear", hd, theta)):
                angles = torch.outer(torch.from_numpy(positions), torch.from_numpy(f)).float()
                cos, sin = tables(f, positions)
                assert np.array_equal(_bits(cos), _bits(torch.cos(angles).numpy())), (hd, theta)
                assert np.array_equal(_bits(sin), _bits(torch.sin(angles).numpy())), (hd, theta)
    finally:
        torch.set_num_threads(threads)


def test_torch_fallback_gives_the_same_bits_and_restores_torch_s_threads(monkeypatch):
    torch = pytest.importorskip("torch")
    want = rope_tables(64, 300, 500000.0)
    monkeypatch.setattr(torch_cpu_trig, "_backend", torch_cpu_trig._Torch())
    before = torch.get_num_threads()
    got = rope_tables(64, 300, 500000.0)
    assert torch.get_num_threads() == before
    assert all(np.array_equal(_bits(g), _bits(w)) for g, w in zip(got, want, strict=True))


def test_tables_refuse_what_they_cannot_compute():
    with pytest.raises(ValueError, match="float32"):
        tables(np.ones(4), np.arange(3))
    with pytest.raises(ValueError, match="integer"):
        tables(np.ones(4, np.float32), np.arange(3.0))
    with pytest.raises(ValueError, match="shape"):
        next(rope_chunks(8, 4, inv_freq=np.ones(3, np.float32)))


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # any import of torch, here or in a forked worker, now fails
from llama2bin.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _no_torch(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", prelude + _NO_TORCH, *args], capture_output=True, text=True)


@pytest.mark.parametrize("source", ["checkpoint", "bin"])
def test_v0_write_and_verify_never_import_torch(tmp_path, source):
    """Writing v0, verifying it (default checks) and reading a v0 source (its tables state its
    rope_theta) with torch unimportable: byte-identical to the golden file."""
    out = str(tmp_path / "a.v0.bin")
    src = ["--checkpoint", os.path.join(DATA, "tiny_a.pt")] if source == "checkpoint" else \
        ["--bin", os.path.join(DATA, "tiny_a.v0.bin")]
    for args in (["export", out, *src, "--version", "0", "--quiet"], ["verify", out, *src, "--quiet"]):
        proc = _no_torch(*args)
        assert proc.returncode == 0, (args, proc.stderr)
    assert open(out, "rb").read() == open(os.path.join(DATA, "tiny_a.v0.bin"), "rb").read()


def test_without_mkl_or_torch_v0_is_refused_in_one_line(tmp_path):
    prelude = ("import llama2bin.torch_cpu_trig as m\n"
               "def _absent():\n    raise OSError('the mkl package is not installed')\n"
               "m._find_mkl_rt = _absent\n")
    out = tmp_path / "a.v0.bin"
    proc = _no_torch("export", str(out), "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--version", "0", prelude=prelude)
    assert_refused(proc, "rope tables need MKL 2024.2.0", "or torch", "the mkl package is not installed")
    assert not out.exists()


def test_an_mkl_that_fails_the_known_answers_is_refused():
    code = ("import llama2bin.torch_cpu_trig as m\n"
            "m._KNOWN_ANSWERS = ((m._KNOWN_ANSWERS[0][0], m._KNOWN_ANSWERS[0][1] + 1, m._KNOWN_ANSWERS[0][2]),)\n"
            "try:\n    m._Mkl()\nexcept OSError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "differ from the seed's on the known answers" in proc.stdout, proc.stderr


_MKL_ON = """
import llama2bin.torch_cpu_trig as m
m.intel_cpu = lambda: {intel}
try:
    m._Mkl()
    print("known answers passed")
except OSError as e:
    print(e)
"""


def test_mkl_takes_its_intel_code_paths_on_any_x86_64_cpu():
    """The library that makes MKL take Intel's code paths (built where the CPU is not Intel's) gives
    the known answers; on a non-Intel CPU, without it, MKL refuses its AVX2 path."""
    if platform.machine() != "x86_64":
        pytest.skip("MKL's code paths: x86-64 only")
    proc = subprocess.run([sys.executable, "-c", _MKL_ON.format(intel=False)], capture_output=True, text=True)
    assert proc.stdout.strip() == "known answers passed", proc.stdout + proc.stderr
    if torch_cpu_trig.intel_cpu():
        return
    proc = subprocess.run([sys.executable, "-c", _MKL_ON.format(intel=True)], capture_output=True, text=True)
    assert "MKL cannot run its AVX2 code path here (MKL_CBWR_Set returned -3)" in proc.stdout, proc.stdout + proc.stderr
