"""v0's rotary tables: built in chunks (issue 14.4) yet bit-identical, and at the model's rope_theta
when --allow-rope-theta accepts one (issue 12.4)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from llama_checkpoints import Spec, hf_model, run, save_hf

from llama2bin.formats.reader import BinFile
from llama2bin.formats.rope import ROPE_CHUNK_ROWS, rope_chunks, rope_tables


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
    assert rope["ignored_by"] == ["llama2.c run.c"] and "llama2.rs (Rust)" in rope["read_from_table_by"]
    reports = tmp_path / "reports"
    assert run(["report", str(record), "--model", "m", "--out-dir", str(reports), "--no-plots"], capsys)[0] == 0
    (md,) = [p for p in reports.iterdir() if p.name.endswith(".md")]
    assert "rope tables at rope_theta 500000: right for readers that use them (llama2.rs (Rust)" in md.read_text()
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
