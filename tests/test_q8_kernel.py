"""The compiled Q8_0 kernel (formats/q8_0_kernel.py, numba) gives exactly the numpy path's bytes.

Both quantizers run on the same inputs (random, trained-like, every float32 and bf16 bit pattern
class, the edge cases rounding and the subnormal scales get wrong first, NaN/Inf) and must agree
on every q byte, every scale bit and the reported error; then whole exports (HF bf16 with the q/k
un-permute, float32 sources, golden files) must be byte-identical with either path and any
number of worker processes. Also: small exports never import numba, a missing numba falls back
silently, and the compiled code is cached under llama2bin's cache folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from helpers import DATA

from llama2bin.cli import main
from llama2bin.formats import q8_fast
from llama2bin.formats.q8_0 import Scratch, quantize, quantize_into_numpy
from llama2bin.sources.base import FilePool, to_float32
from llama2bin.sources.hf import HfRotaryRef
from llama2bin.sources.safetensors import SafetensorsFile

needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")

GROUP_SIZES = [1, 2, 3, 5, 7, 12, 32, 33, 64, 96, 128, 256]


@pytest.fixture
def kernel(monkeypatch):
    """The compiled kernel loaded and in use for this test only (the process-wide switch is
    restored afterwards, so other tests in this worker keep the numpy path)."""
    monkeypatch.setenv(q8_fast.ENV_SWITCH, "numba")
    monkeypatch.setattr(q8_fast, "_use", False)
    assert q8_fast.prepare(0), "numba is installed but the kernel did not load"
    return q8_fast


def _bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round to nearest even (as torch converts)."""
    bits = w.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _float32_cases(rng: np.random.Generator, gs: int) -> dict[str, np.ndarray]:
    """Named float32 inputs of a whole number of groups, all finite."""
    n = gs * 97
    ulp = np.float32(1e-45)  # the smallest subnormal, 2^-149
    cases = {
        "gaussian": rng.standard_normal(n, dtype=np.float32) * np.float32(0.02),
        # trained weights: heavy tails and a few outlier columns much larger than the rest
        "trained-like": (rng.standard_t(3, n) * 0.01 * np.where(rng.random(n) < 0.01, 30.0, 1.0)).astype(np.float32),
        # every finite bit pattern class: all exponents (subnormals included), both signs
        "random bits": _finite(rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)).view(np.float32),
        "scales 1e-40..1e38": np.clip(rng.standard_normal(n), -3, 3).astype(np.float32) * rng.choice(
            np.array([1e-40, 1e-38, 1e-3, 0.02, 3.0, 1e30, 1e38], dtype=np.float32), n),
        "zeros": np.zeros(n, np.float32),
        "negative zeros": np.full(n, -0.0, np.float32),
        # subnormal groups: scale = fl(absmax / 127) rounds far from absmax / 127, so |w / scale|
        # reaches 190, past int8: both paths must wrap it the same way
        "subnormal integers of ulp": rng.integers(-300, 301, n).astype(np.float32) * ulp,
        "one ulp": np.full(n, ulp, np.float32),
    }
    ties = np.full(n, 0.5, np.float32).reshape(-1, gs)
    if gs >= 4:  # w / scale lands exactly on .5: round half to even
        ties[:, 0], ties[:, 1], ties[:, 2], ties[:, 3] = 127.0, 1.5, -2.5, 63.5
    cases["ties"] = ties.reshape(-1)
    mixed = cases["gaussian"].copy().reshape(-1, gs)  # one group of each kind in a single call
    for i, name in enumerate(["zeros", "negative zeros", "subnormal integers of ulp", "one ulp", "ties", "random bits"]):
        mixed[i] = cases[name].reshape(-1, gs)[i]
    cases["mixed groups"] = mixed.reshape(-1)
    return cases


def _finite(bits: np.ndarray) -> np.ndarray:
    """Random float32 bit patterns with Inf/NaN exponents moved to finite ones."""
    bad = (bits & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    bits[bad] &= np.uint32(0xBFFFFFFF)
    return bits


def _numpy(w: np.ndarray, gs: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    q, s = np.full(w.size, 99, np.int8), np.full(w.size // gs, np.nan, np.float32)
    err = quantize_into_numpy(w, gs, q, s, Scratch())
    return q, s, err


def _compiled(bits: np.ndarray, gs: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    q, s = np.full(bits.size, -99, np.int8), np.full(bits.size // gs, 7.0, np.float32)
    err = q8_fast.quantize_bits(bits, gs, q, s)
    return q, s, err


def _assert_same(a: tuple, b: tuple, what: str) -> None:
    assert a[2] == b[2], f"{what}: error {a[2]} != {b[2]}"
    if a[2] is not None:  # None: NaN/Inf, outputs undefined
        assert a[0].tobytes() == b[0].tobytes(), f"{what}: q differs"
        assert a[1].view(np.uint32).tobytes() == b[1].view(np.uint32).tobytes(), f"{what}: scale bits differ"


@needs_numba
@pytest.mark.parametrize("gs", GROUP_SIZES)
def test_float32_inputs_give_the_numpy_bytes(kernel, gs):
    rng = np.random.default_rng(100 + gs)
    for name, w in _float32_cases(rng, gs).items():
        _assert_same(_numpy(w, gs), _compiled(w.view(np.uint32), gs), f"{name}, group size {gs}")


@needs_numba
@pytest.mark.parametrize("gs", GROUP_SIZES)
def test_bf16_inputs_give_the_numpy_bytes_of_their_widened_values(kernel, gs):
    rng = np.random.default_rng(200 + gs)
    n = gs * 97
    raw = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    raw[(raw & 0x7F80) == 0x7F80] &= 0xBFFF  # finite: no all-ones exponent
    inputs = {"random bf16 bits": raw}
    inputs |= {name: _bf16_bits(w) for name, w in _float32_cases(rng, gs).items()}
    for name, bits in inputs.items():
        widened = to_float32(bits, "BF16", np.empty(bits.size, np.float32))
        _assert_same(_numpy(widened, gs), _compiled(bits, gs), f"bf16 {name}, group size {gs}")


@needs_numba
def test_the_cases_that_exercise_the_int8_wrap_and_ties_really_happen(kernel):
    """Guards the edge cases above against becoming vacuous: a subnormal group whose |w / scale|
    is 190 (numpy's unsafe cast wraps it to -66), and exact .5 ties rounded to even."""
    ulp = np.float32(1e-45)
    w = np.array([190, -190, 64, 0], np.float32) * ulp  # scale = fl(190 ulp / 127) = 1 ulp
    q, s, err = _compiled(w.view(np.uint32), 4)
    assert s[0] == ulp and q.tolist() == [-66, 66, 64, 0]
    _assert_same(_numpy(w, 4), (q, s, err), "wrap")
    ties = np.array([127.0, 1.5, -2.5, 0.5], np.float32)  # scale exactly 1
    q, s, _ = _compiled(ties.view(np.uint32), 4)
    assert s[0] == 1.0 and q.tolist() == [127, 2, -2, 0]


@needs_numba
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, -np.nan, "signalling NaN", "NaN payload"])
@pytest.mark.parametrize("where", [0, 5, -1])
def test_nan_and_inf_are_refused_by_both(kernel, bad, where):
    gs = 32
    w = np.random.default_rng(3).standard_normal(gs * 9).astype(np.float32)
    bits = w.view(np.uint32)
    if bad == "signalling NaN":
        bits[where * gs] = 0x7F800001
    elif bad == "NaN payload":
        bits[where * gs + 3 if where >= 0 else -1] = 0xFFC12345
    else:
        w[where * gs + 1 if where >= 0 else -2] = bad
    assert _numpy(w, gs)[2] is None
    assert _compiled(w.view(np.uint32), gs)[2] is None
    raw = _bf16_bits(w)
    raw[(bits & 0x7F800000) == 0x7F800000] = (bits[(bits & 0x7F800000) == 0x7F800000] >> 16) | 0x40  # stays NaN/Inf
    assert _compiled(raw, gs)[2] is None


@needs_numba
def test_any_split_into_calls_gives_the_same_bytes(kernel):
    """Chunks and worker processes split a tensor anywhere on a group boundary: the result may not
    depend on it (the reported error is a max, exact in any order)."""
    gs = 64
    w = np.random.default_rng(4).standard_normal(gs * 1000).astype(np.float32) * np.float32(0.02)
    whole = _compiled(w.view(np.uint32), gs)
    for cut in (1, 7, 500, 999):
        a, b = _compiled(w[: cut * gs].view(np.uint32), gs), _compiled(w[cut * gs :].view(np.uint32), gs)
        assert np.concatenate([a[0], b[0]]).tobytes() == whole[0].tobytes()
        assert np.concatenate([a[1], b[1]]).tobytes() == whole[1].tobytes()
        assert max(a[2], b[2]) == whole[2]
    q, s = quantize(w, gs)
    assert q.tobytes() == whole[0].tobytes() and s.tobytes() == whole[1].tobytes()  # and the plain reference


# ---- HF bf16 sources: the q/k un-permute on stored bits -----------------------------------------


def _write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """A .safetensors file written by hand: uint16 arrays as bf16 bit patterns, float32 as F32."""
    header, offset = {}, 0
    for name, bits in tensors.items():
        header[name] = {"dtype": "BF16" if bits.dtype == np.uint16 else "F32", "shape": list(bits.shape),
                        "data_offsets": [offset, offset + bits.nbytes]}
        offset += bits.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for bits in tensors.values():
            f.write(bits.tobytes())


def test_unpermuted_bf16_rows_are_the_rows_read_as_float32(tmp_path):
    """HfRotaryRef.read_bf16_into (what the compiled path reads) widens to exactly read_rows, for
    row ranges that start and end inside heads."""
    rng = np.random.default_rng(5)
    hd, cols = 8, 24
    q_bits = _bf16_bits(rng.standard_normal((6 * hd, cols)).astype(np.float32))
    path = str(tmp_path / "w.safetensors")
    _write_safetensors(path, {"q": q_bits, "f": rng.standard_normal((2 * hd, cols)).astype(np.float32)})
    pool = FilePool()
    try:
        st = SafetensorsFile(path, pool)
        ref = HfRotaryRef(st.tensor("q"), hd)
        for start, stop in [(0, 48), (0, 8), (3, 5), (7, 9), (5, 37), (40, 48), (47, 48)]:
            bits = ref.read_bf16_into(start, stop, np.empty((stop - start) * cols, np.uint16))
            widened = to_float32(bits, "BF16", np.empty(bits.size, np.float32))
            assert np.array_equal(widened.reshape(stop - start, cols), ref.read_rows(start, stop)), (start, stop)
        # float32 storage has no bf16 bits to give: the compiled path then quantizes read_rows' values
        assert HfRotaryRef(st.tensor("f"), hd).read_bf16_into(0, hd, np.empty(hd * cols, np.uint16)) is None
    finally:
        pool.close()


def _hf_bf16_model(folder: str, seed: int) -> str:
    """A tiny LlamaForCausalLM directory (GQA, untied, bf16 safetensors in 2 shards) written by hand:
    trained-like heavy-tailed weights, plus zeros, subnormals and tie values in some groups."""
    rng = np.random.default_rng(seed)
    dim, layers, heads, kv, vocab, hidden = 64, 2, 8, 2, 96, 160
    kvd = dim // heads * kv
    shapes = {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,), "lm_head.weight": (vocab, dim)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,),
                   p + "self_attn.q_proj.weight": (dim, dim), p + "self_attn.k_proj.weight": (kvd, dim),
                   p + "self_attn.v_proj.weight": (kvd, dim), p + "self_attn.o_proj.weight": (dim, dim),
                   p + "mlp.gate_proj.weight": (hidden, dim), p + "mlp.up_proj.weight": (hidden, dim),
                   p + "mlp.down_proj.weight": (dim, hidden)}
    tensors = {}
    for name, shape in shapes.items():
        w = (rng.standard_t(3, shape) * 0.02).astype(np.float32) if len(shape) == 2 else 1 + 0.1 * rng.standard_normal(shape)
        if len(shape) == 2:
            flat = w.reshape(-1)
            flat[:32] = 0.0
            flat[32:64] = rng.integers(-300, 301, 32) * np.float32(1e-45)  # bf16 keeps no subnormal this small: zeros
            flat[64:96] = rng.integers(-300, 301, 32) * np.float32(2.0**-133)  # bf16-representable subnormals
            flat[96:100] = [127.0, 1.5, -2.5, 63.5]
        tensors[name] = _bf16_bits(np.asarray(w, np.float32))
    os.makedirs(folder)
    names = list(tensors)
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        _write_safetensors(os.path.join(folder, f"model-{k + 1:05d}-of-00002.safetensors"), {n: tensors[n] for n in part})
    index = {"weight_map": {n: f"model-{1 + (i >= len(names) // 2):05d}-of-00002.safetensors" for i, n in enumerate(names)}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim, "intermediate_size": hidden,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
              "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return folder


def _export(monkeypatch, capsys, paths: list[str], flag: str, source: str, versions: list[str], switch: str,
            threads: int) -> list[bytes]:
    """One `llama2bin export` of `versions` (one output each) with the kernel switch set; the bytes."""
    monkeypatch.setenv(q8_fast.ENV_SWITCH, switch)
    assert main(["export", *paths, flag, source, "--version", *versions, "--threads", str(threads), "--quiet"]) == 0
    assert q8_fast.loaded() == (switch == "numba")
    capsys.readouterr()
    return [_read(p) for p in paths]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@needs_numba
@pytest.mark.parametrize("versions", [["2"], ["1"], ["0", "1", "2"]])
def test_hf_bf16_exports_are_identical_with_either_path_and_any_thread_count(tmp_path, monkeypatch, capsys, versions):
    monkeypatch.setattr(q8_fast, "_use", False)
    src = _hf_bf16_model(str(tmp_path / "hf"), seed=6)
    outputs = {}
    for switch in ("numpy", "numba"):
        for threads in (1, 2):
            paths = [str(tmp_path / f"{switch}-{threads}.v{v}.bin") for v in versions]
            outputs[switch, threads] = _export(monkeypatch, capsys, paths, "--hf", src, versions, switch, threads)
    reference = outputs["numpy", 1]
    for key, got in outputs.items():
        assert got == reference, f"{key} differs from numpy with 1 worker"


@needs_numba
@pytest.mark.parametrize("source, flag", [("tiny_a.pt", "--checkpoint"), ("tiny_hf_untied", "--hf")])
def test_the_compiled_path_writes_the_golden_bytes(tmp_path, monkeypatch, capsys, source, flag):
    """float32 sources (a llama2.c checkpoint, an HF directory with its q/k permute) through the
    kernel's float32 specialization, against the checked-in golden files."""
    monkeypatch.setattr(q8_fast, "_use", False)
    stem = source.removesuffix(".pt")
    for version in ("1", "2") if stem == "tiny_a" else ("2",):
        out = str(tmp_path / f"{stem}.v{version}.bin")
        got = _export(monkeypatch, capsys, [out], flag, os.path.join(DATA, source), [version], "numba", 2)
        assert got == [_read(os.path.join(DATA, f"{stem}.v{version}.bin"))]


# ---- when numba is (not) imported -----------------------------------------------------------------

_EXPORT_AND_REPORT = """
import json, sys
{prelude}
from llama2bin.cli import main
rc = main(["export", sys.argv[1], "--checkpoint", sys.argv[2], "--version", "2", "--quiet"])
from llama2bin.formats import q8_fast
print(json.dumps({{"rc": rc, "numba": "numba" in sys.modules, "kernel": q8_fast.loaded()}}))
"""


def _run(tmp_path, prelude: str = "", **env: str) -> tuple[dict, str]:
    out = str(tmp_path / "out.v2.bin")
    environ = {k: v for k, v in os.environ.items() if k not in (q8_fast.ENV_SWITCH, "NUMBA_CACHE_DIR")} | env
    proc = subprocess.run([sys.executable, "-c", _EXPORT_AND_REPORT.format(prelude=prelude), out,
                           os.path.join(DATA, "tiny_a.pt")], capture_output=True, text=True, env=environ)
    assert proc.returncode == 0, proc.stderr
    assert _read(out) == _read(os.path.join(DATA, "tiny_a.v2.bin"))
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr


def test_a_small_export_never_imports_numba(tmp_path):
    report, _ = _run(tmp_path)
    assert report == {"rc": 0, "numba": False, "kernel": False}


def test_without_numba_the_numpy_path_runs_and_says_nothing(tmp_path):
    _, usual = _run(tmp_path)
    report, stderr = _run(tmp_path, prelude="sys.modules['numba'] = None  # as if not installed",
                          **{q8_fast.ENV_SWITCH: "numba"})
    assert report == {"rc": 0, "numba": True, "kernel": False}  # True: the None placeholder
    assert stderr == usual  # nothing added (tiny_a's one BACKOFF line)


@needs_numba
def test_the_compiled_kernel_is_cached_under_the_llama2bin_cache(tmp_path):
    _, usual = _run(tmp_path)
    cache = tmp_path / "cache"
    report, stderr = _run(tmp_path, **{q8_fast.ENV_SWITCH: "numba", "LLAMA2BIN_CACHE_DIR": str(cache)})
    assert report == {"rc": 0, "numba": True, "kernel": True} and stderr == usual
    assert any(name.endswith(".nbi") for _, _, files in os.walk(cache / "numba") for name in files)


def test_the_numba_cache_is_beside_the_c_consumer_cache(monkeypatch):
    from llama2bin.native import cache_dir

    for env in ({"LLAMA2BIN_CACHE_DIR": "/x/y"}, {"XDG_CACHE_HOME": "/xdg"}, {}):
        for key in ("LLAMA2BIN_CACHE_DIR", "XDG_CACHE_HOME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert q8_fast.numba_cache_dir() == os.path.join(cache_dir(), "numba")


def test_the_size_rule_and_its_override(monkeypatch):
    monkeypatch.delenv(q8_fast.ENV_SWITCH, raising=False)
    monkeypatch.setattr(q8_fast, "_kernel", None)  # not loaded in this process
    assert not q8_fast.wanted(q8_fast.MIN_ELEMENTS - 1) and q8_fast.wanted(q8_fast.MIN_ELEMENTS)
    monkeypatch.setattr(q8_fast, "_kernel", object())  # loaded already (a job server's worker): any size
    assert q8_fast.wanted(1)
    monkeypatch.setenv(q8_fast.ENV_SWITCH, "numpy")
    assert not q8_fast.wanted(10**12)
    monkeypatch.setattr(q8_fast, "_kernel", None)
    monkeypatch.setenv(q8_fast.ENV_SWITCH, "numba")
    assert q8_fast.wanted(0)


def test_gguf_encoders_follow_the_same_rule_with_their_own_kernel(monkeypatch):
    """GGUF's compiled encoders (formats/gguf_kernel.py) load under the same size rule; what counts
    as 'already loaded' is their own kernel, not the .bin quantizer's."""
    from llama2bin.formats import gguf_encode

    monkeypatch.delenv(q8_fast.ENV_SWITCH, raising=False)
    monkeypatch.setattr(q8_fast, "_kernel", object())  # the .bin quantizer loaded: no say here
    monkeypatch.setattr(gguf_encode, "_kernel", None)
    loads = []
    monkeypatch.setattr(gguf_encode, "load", lambda: loads.append(1) or True)
    assert not gguf_encode.prepare(q8_fast.MIN_ELEMENTS - 1) and loads == []
    assert gguf_encode.prepare(q8_fast.MIN_ELEMENTS) and loads == [1]
    monkeypatch.setattr(gguf_encode, "_kernel", object())  # loaded (a job server's worker): any size
    assert gguf_encode.prepare(1)
    monkeypatch.setenv(q8_fast.ENV_SWITCH, "numpy")
    assert not gguf_encode.prepare(10**12)
