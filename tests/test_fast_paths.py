"""The performance paths give exactly what the plain ones give.

quantize_into (blocked, bit-pattern max) against the reference quantize; the forked worker
pool against in-process runs (golden bytes, identical verification results, errors and
ordering); to_float32 into a buffer against plain numpy casts.
"""

import json
import os
import signal

import numpy as np
import pytest
from helpers import DATA, preset_args, preset_arrays, run_cli, save_llama2c

from llama2bin import parallel
from llama2bin.checks.verification import verify_output
from llama2bin.errors import Llama2binError
from llama2bin.formats import q8_0
from llama2bin.formats.q8_0 import Scratch, group_scales_into, max_group_error, quantize, quantize_into
from llama2bin.formats.source_registry import open_source
from llama2bin.formats.writer import export
from llama2bin.parallel import ForkedCall, ForkPool, can_fork
from llama2bin.sources.base import to_float32

needs_fork = pytest.mark.skipif(not can_fork(), reason="worker processes are forked on Linux only")


def _hard_cases(rng: np.random.Generator, gs: int, n_groups: int) -> np.ndarray:
    """Random groups of very different scales plus the cases rounding gets wrong first."""
    n = gs * n_groups
    w = rng.standard_normal(n).astype(np.float32) * rng.choice(
        np.array([1e-3, 0.02, 3.0, 1e-40, 1e30], dtype=np.float32), n
    )
    g = w.reshape(n_groups, gs)
    g[0] = 0.0  # all-zero group: scale 0, q 0
    g[1] = -0.0
    if gs >= 4:
        g[2] = 0.5  # ties: w / scale lands exactly on .5 after the division
        g[2, 0], g[2, 1], g[2, 2], g[2, 3] = 127.0, 1.5, -2.5, 63.5
    g[3] = np.float32(1.0e-45)  # subnormals
    g[4, 0] = np.float32(3.4e38)  # near float32 max
    return w


@pytest.mark.parametrize("gs", [1, 2, 8, 32, 64, 96, 1 << 17])
def test_quantize_into_is_bit_identical_to_quantize(gs, monkeypatch):
    rng = np.random.default_rng(gs)
    for n_groups in (5, 6, 3000 if gs < 4096 else 7):
        for block in (64, 1 << 16):  # blocks that cut a chunk into many pieces, and the default
            monkeypatch.setattr(q8_0, "BLOCK_ELEMS", block)
            w = _hard_cases(rng, gs, n_groups)
            q, s = quantize(w, gs)
            q2, s2 = np.full(w.size, 99, np.int8), np.full(w.size // gs, np.nan, np.float32)
            err = quantize_into(w, gs, q2, s2, Scratch())
            assert np.array_equal(q, q2)
            assert np.array_equal(s.view(np.uint32), s2.view(np.uint32))  # -0.0 vs +0.0 matters
            assert err == max_group_error(w, q, s, gs)
            s3 = np.empty_like(s2)
            assert group_scales_into(w, gs, s3, Scratch())
            assert np.array_equal(s.view(np.uint32), s3.view(np.uint32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_into_reports_nan_and_inf(bad):
    w = np.random.default_rng(0).standard_normal(64 * 300).astype(np.float32)
    w[12345] = bad
    q, s = np.empty(w.size, np.int8), np.empty(300, np.float32)
    assert quantize_into(w, 64, q, s, Scratch()) is None
    assert not group_scales_into(w, 64, s, Scratch())
    assert not q8_0.all_finite(w)
    assert q8_0.all_finite(np.zeros(10, np.float32))


@pytest.mark.parametrize("dtype", ["F32", "BF16", "F16", "F64"])
def test_to_float32_into_a_buffer(dtype):
    rng = np.random.default_rng(1)
    if dtype == "BF16":
        raw16 = rng.integers(0, 1 << 16, 999, dtype=np.uint16)
        want = (raw16.astype(np.uint32) << 16).view(np.float32)
        raw = raw16.view(np.uint8)
    else:
        values = rng.standard_normal(999).astype({"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype])
        want, raw = values.astype(np.float32), values.view(np.uint8)
    out = np.full(999, np.nan, np.float32)
    assert np.array_equal(to_float32(raw, dtype, out).view(np.uint32), want.view(np.uint32))
    assert np.array_equal(to_float32(raw, dtype).view(np.uint32), want.view(np.uint32))


@needs_fork
@pytest.mark.parametrize("model", ["tiny_a", "tiny_b"])
def test_forked_workers_write_the_golden_bytes(tmp_path, model):
    with open_source("llama2c", os.path.join(DATA, f"{model}.pt")) as src:
        result = export(src, [(v, str(tmp_path / f"v{v}.bin")) for v in (0, 1, 2)], threads=2, quiet=True)
        in_process = export(src, [(2, str(tmp_path / "one.bin"))], threads=1, quiet=True)
    for v in (0, 1, 2):
        assert (tmp_path / f"v{v}.bin").read_bytes() == open(os.path.join(DATA, f"{model}.v{v}.bin"), "rb").read()
    assert result.max_errors == in_process.max_errors and result.summary_line() == in_process.summary_line()


def _counting_forks(monkeypatch) -> list[int]:  # type: ignore[no-untyped-def]
    forks: list[int] = []
    real = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real())
    return forks


@needs_fork
def test_forked_verification_equals_the_in_process_one(tmp_path, monkeypatch):
    """Same JSON whatever the worker count: results are merged in file order, never by timing."""
    monkeypatch.setattr(parallel, "SMALL_WORK_BYTES", 0)  # the tiny files get their workers and hash process
    forks = _counting_forks(monkeypatch)
    with open_source("llama2c", os.path.join(DATA, "tiny_a.pt")) as src:
        for v in (0, 1, 2):
            golden = os.path.join(DATA, f"tiny_a.v{v}.bin")
            forks.clear()
            one = verify_output(golden, src, threads=1).tensor
            assert len(forks) == 1  # the hash process
            two = verify_output(golden, src, threads=2).tensor
            assert len(forks) == 1 + 3  # and two workers
            assert one.passed and one.to_json() == two.to_json()
            # a corrupted copy: the same first failure, the same statistics of the other tensors
            bad = tmp_path / f"bad{v}.bin"
            data = bytearray(open(golden, "rb").read())
            for frac in (0.3, 0.6):
                data[int(len(data) * frac)] ^= 0x40
            bad.write_bytes(data)
            one, two = (verify_output(str(bad), src, threads=threads).tensor for threads in (1, 2))
            assert not one.passed and one.to_json() == two.to_json()


@needs_fork
def test_a_small_file_is_verified_in_one_process_whatever_threads_allows(monkeypatch):
    """A fork costs more than comparing a file under parallel.SMALL_WORK_BYTES (and hashing it)."""
    forks = _counting_forks(monkeypatch)
    with open_source("llama2c", os.path.join(DATA, "tiny_a.pt")) as src:
        small = verify_output(os.path.join(DATA, "tiny_a.v2.bin"), src, threads=2).tensor
    assert small.passed and small.sha256 and forks == []


@needs_fork
def test_a_worker_error_is_the_one_line_error_and_leaves_nothing(tmp_path):
    arrays = preset_arrays("mha")
    arrays["layers.1.feed_forward.w3.weight"][5, 7] = np.nan
    ckpt = save_llama2c(str(tmp_path / "nan.pt"), arrays, preset_args("mha"))
    out = tmp_path / "out"
    proc = run_cli("export", str(out / "m.v0.bin"), str(out / "m.v2.bin"), "--checkpoint", ckpt,
                   "--version", "0", "2", "--threads", "2", "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"llama2bin: error: {ckpt}: tensor layers.1.feed_forward.w3.weight contains NaN or Inf"
    ]
    assert os.listdir(out) == []


@needs_fork
def test_fork_pool_keeps_task_order_and_reraises_the_first_error():
    def job(i: int) -> tuple[int, int]:
        if i == 7:
            raise Llama2binError("task 7 failed")
        return i, os.getpid()

    with ForkPool(list(range(7)), job, 3) as pool:
        results = list(pool.results())
    assert [i for i, _ in results] == list(range(7))
    assert len({pid for _, pid in results} - {os.getpid()}) == 3  # really ran in 3 other processes

    seen = []
    with pytest.raises(Llama2binError, match="task 7 failed"), ForkPool(list(range(20)), job, 2) as pool:
        for i, _ in pool.results():
            seen.append(i)
    assert seen == list(range(7))  # every result before the failing task, in order, then its error


@needs_fork
def test_a_killed_worker_is_reported_not_waited_for():
    def job(i: int) -> int:
        if i == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return i

    with pytest.raises(Llama2binError, match="worker process 1 was killed by signal SIGKILL"), ForkPool(
        list(range(8)), job, 2
    ) as pool:
        list(pool.results())


@needs_fork
def test_forked_call_returns_or_raises():
    with ForkedCall(pow, 3, 4) as call:
        assert call.result() == 81
    with ForkedCall(int, "not a number") as call, pytest.raises(ValueError):
        call.result()


def test_verify_json_from_the_cli_does_not_depend_on_threads(tmp_path):
    bins = [os.path.join(DATA, f"tiny_b.v{v}.bin") for v in (0, 1, 2)]
    outs = {}
    for threads in ("1", "2"):
        jsons = [str(tmp_path / f"{threads}.{v}.json") for v in (0, 1, 2)]
        proc = run_cli("verify", *bins, "--checkpoint", os.path.join(DATA, "tiny_b.pt"), "--no-functional",
                       "--threads", threads, "--json", *jsons)
        assert proc.returncode == 0, proc.stderr
        outs[threads] = [json.load(open(p)) for p in jsons]
    assert outs["1"] == outs["2"]


def test_rope_tables_are_single_threaded_and_leave_torch_as_it_was():
    """torch's multi-threaded cos/sin sometimes returned values off by ~1e-4 for the rows a second
    OpenMP thread computed; the tables are computed on one thread, torch's setting is restored."""
    torch = pytest.importorskip("torch")
    from llama2bin.formats.rope import rope_tables

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cos, sin = rope_tables(64, 2048)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        angles = torch.outer(torch.arange(2048), 1.0 / (10000.0 ** (torch.arange(0, 64, 2)[:32].float() / 64))).float()
        assert np.array_equal(cos.view(np.uint32), torch.cos(angles).numpy().view(np.uint32))
        assert np.array_equal(sin.view(np.uint32), torch.sin(angles).numpy().view(np.uint32))
    finally:
        torch.set_num_threads(before)


def _bf16_copy(src_dir: str, dst_dir) -> str:  # type: ignore[no-untyped-def]
    """The HF directory with every float32 tensor cut to bfloat16 (its top 16 bits)."""
    import shutil
    import struct

    dst_dir.mkdir()
    shutil.copy(os.path.join(src_dir, "config.json"), dst_dir / "config.json")
    with open(os.path.join(src_dir, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        bf16 = (np.frombuffer(data[start:stop], dtype="<u4") >> 16).astype("<u2").tobytes()
        out_header[name] = {"dtype": "BF16", "shape": info["shape"], "data_offsets": [offset, offset + len(bf16)]}
        chunks.append(bf16)
        offset += len(bf16)
    blob = json.dumps(out_header).encode()
    with open(dst_dir / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))
    return str(dst_dir)


@pytest.mark.parametrize("kind", ["llama2c", "hf", "hf-bf16"])
def test_sampling_reads_weights_into_reused_buffers_with_the_same_products(tmp_path, kind):
    """Sampling's plain products over weights not kept resident (read again for every token, into
    reused buffers; HF q/k un-permuted there, bf16 widened there) give the bits of the kept
    weights' products and of plain arrays."""
    from llama2bin.checks.forward import classify, hidden_states
    from llama2bin.checks.weights import ResidentWeights, SourceWeights

    path = {"llama2c": os.path.join(DATA, "tiny_a.pt"), "hf": os.path.join(DATA, "tiny_hf_untied")}.get(kind)
    if kind == "hf-bf16":
        path = _bf16_copy(os.path.join(DATA, "tiny_hf_untied"), tmp_path / "bf16")
    with open_source("llama2c" if kind == "llama2c" else "hf", path) as src:
        cfg = src.config
        tok = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 5))
        plain = {name: src.tensor(name).read_all() for name in cfg.shapes()}
        results = []
        for weights in (plain, ResidentWeights(SourceWeights(src)), ResidentWeights(SourceWeights(src), budget=0)):
            hidden = hidden_states(weights, cfg, tok, exact=False)
            results.append((hidden, classify(weights, cfg, hidden, exact=False)))
    for hidden, logits in results[1:]:
        assert np.array_equal(hidden, results[0][0]) and np.array_equal(logits, results[0][1])
