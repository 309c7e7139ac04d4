"""Issue 14, memory: verify's functional check is sized to the vocabulary, not to logits held whole.

A 17 MB .pt with vocab 2^20 and dim 2 made the default `verify` take 6.4 GB (measured again
before the block-wise logits: 6.5 GB peak RSS). Here it must simply pass under a 1 GiB
address-space cap, the corpus's ceiling (tests/hostile_harness.py)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from helpers import preset_args, preset_arrays, save_llama2c

from llama2bin.cli import main

CAP = 1 << 30


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


@pytest.mark.slow
def test_verify_of_a_huge_vocabulary_stays_under_the_cap(tmp_path):
    shape = {"dim": 2, "n_heads": 1, "n_kv_heads": None, "n_layers": 1, "vocab_size": 1 << 20, "multiple_of": 2,
             "max_seq_len": 16}
    pt = save_llama2c(str(tmp_path / "wide.pt"), preset_arrays("untied", **shape), {**preset_args("untied"), **shape},
                      tie=False)
    out = str(tmp_path / "wide.v0.bin")
    assert main(["export", out, "--checkpoint", pt, "--version", "0", "--quiet"]) == 0
    proc = subprocess.run([sys.executable, "-m", "llama2bin", "verify", out, "--checkpoint", pt, "--quiet"],
                          capture_output=True, text=True, timeout=600, preexec_fn=_cap)
    assert proc.returncode == 0, proc.stderr  # exit 0: the tensor and the functional checks both passed
    assert f"{out}: OK" in proc.stdout and "functional" in proc.stdout, proc.stdout
