"""export as llama2.c users type it (issue 12.6) and group sizes runq.c can run (issue 12.3)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import assert_refused
from helpers import DATA, preset_args, preset_arrays, run_cli, save_llama2c

import llama2bin
from llama2bin.checks.ccheck import find_compiler
from llama2bin.cli import BLAS_THREAD_VARIABLES, main
from llama2bin.cli.export import split_versions_and_outputs
from llama2bin.formats.reader import BinFile

CKPT = os.path.join(DATA, "tiny_a.pt")


def _golden(version: str) -> bytes:
    with open(os.path.join(DATA, f"tiny_a.v{version}.bin"), "rb") as f:
        return f.read()


def test_version_before_the_output(tmp_path):
    out = tmp_path / "out.bin"
    assert main(["export", "--checkpoint", CKPT, "--version", "2", str(out), "--quiet"]) == 0
    assert out.read_bytes() == _golden("2")


@pytest.mark.parametrize("argv", [
    ["--version", "0,2", "{a}", "{b}"],
    ["--version", "0", "--version", "2", "{a}", "{b}"],
    ["{a}", "{b}", "--version", "0", "2"],
    ["--version", "0", "2", "{a}", "{b}"],
])
def test_version_lists(argv, tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    argv = [x.format(a=a, b=b) for x in argv]
    assert main(["export", "--checkpoint", CKPT, *argv, "--quiet"]) == 0
    assert (a.read_bytes(), b.read_bytes()) == (_golden("0"), _golden("2"))


def test_split_versions_and_outputs():
    assert split_versions_and_outputs(None, ["x.bin"]) == (["0"], ["x.bin"])
    assert split_versions_and_outputs(["2", "out.bin"], []) == (["2"], ["out.bin"])
    assert split_versions_and_outputs(["0,1f", "hf", "d/hf", "x.bin"], []) == (["0", "1f", "hf"], ["d/hf", "x.bin"])
    assert split_versions_and_outputs(["7"], ["x.bin"]) == (["7"], ["x.bin"])  # refused later as unknown


def test_an_output_named_for_another_version_is_refused(tmp_path):
    out = tmp_path / "a.v0.bin"
    assert_refused(run_cli("export", str(out), "--checkpoint", CKPT, "--version", "2"),
                          str(out), "says version 0", "version 2")
    assert not out.exists()
    assert main(["export", str(tmp_path / "a.v2.bin"), "--checkpoint", CKPT, "--version", "2", "--quiet"]) == 0


def test_missing_output_is_one_line(tmp_path):
    assert_refused(run_cli("export", "--checkpoint", CKPT, "--version", "2"), "no output path")


def test_program_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"llama2bin {llama2bin.__version__}\n"


def test_stories260k_shape_gets_a_v2_runq_can_run(tmp_path):
    """dim 64, hidden_dim 172 (multiple_of 4), 8 heads, 4 kv heads: llama2.c's stories260K shape."""
    changes = {"multiple_of": 4, "n_heads": 8, "n_kv_heads": 4}
    args = {**preset_args("mha"), **changes}
    ckpt = save_llama2c(str(tmp_path / "s260k.pt"), preset_arrays("mha", **changes), args)
    v1, v2 = str(tmp_path / "s.v1.bin"), str(tmp_path / "s.v2.bin")
    proc = run_cli("export", v1, v2, "--checkpoint", ckpt, "--version", "1", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "BACKOFF: version 2 group size 4 instead of 64: runq.c needs it to divide dim 64 and hidden_dim 172"]
    with BinFile(v1) as a, BinFile(v2) as b:
        assert b.config.hidden_dim == 172 and (a.group_size, b.group_size) == (64, 4)
    verified = run_cli("verify", v1, v2, "--checkpoint", ckpt, "--quiet", "--no-functional")
    assert verified.returncode == 0, verified.stderr
    if find_compiler() is None:
        pytest.skip("no C compiler: the C consumer cannot run")
    checked = run_cli("c-check", v2, "--require-cc")
    assert checked.returncode == 0, checked.stderr
    assert "C consumer agrees (v2, q8 arithmetic" in checked.stdout


def test_a_shared_back_off_is_said_once_and_quantized_once(tmp_path):
    outs = [str(tmp_path / "b.v1.bin"), str(tmp_path / "b.v2.bin")]
    proc = run_cli("export", *outs, "--checkpoint", os.path.join(DATA, "tiny_b.pt"), "--version", "1", "2", "--quiet")
    assert proc.returncode == 0 and proc.stderr.splitlines() == ["BACKOFF: reducing group size to 8 to fit dim 40"]
    for out, v in zip(outs, ("1", "2"), strict=True):
        with open(out, "rb") as f, open(os.path.join(DATA, f"tiny_b.v{v}.bin"), "rb") as g:
            assert f.read() == g.read()


def test_the_program_starts_no_blas_threads_unless_asked():
    """The program's main() sets BLAS to one thread before numpy's import (OpenBLAS's spinning
    pool cost every command 0.06 CPU s and llama2bin never uses it); a user's setting wins."""
    probe = ("import os, sys\n"
             "from llama2bin.cli import BLAS_THREAD_VARIABLES, main\n"
             "main(['inspect', sys.argv[1]])\n"
             "from threadpoolctl import threadpool_info\n"
             "print([os.environ.get(n) for n in BLAS_THREAD_VARIABLES],"
             " sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}))\n")
    golden = os.path.join(os.path.dirname(__file__), "data", "tiny_a.v0.bin")
    env = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", probe, golden], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "['1', '1', '1'] [1]"
    out = subprocess.run([sys.executable, "-c", probe, golden], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "['2', '1', '1'] [2]"
