"""The default pipeline at the shape users have: stories15M-shaped checkpoints (llama2.c's init
before training) and a trained model, every check on, every verdict right.

The 15M seeds are ones whose C check failed before the q8 comparison was teacher-forced (C's own
q8 logits differ from Python's own by ~1e-2 there, one activation rounding the other way at a tie;
bench/ccheck_rates.md); the trained model is tests/trained_model.py's."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # Snakemake on two 15M models: about a minute of CPU

pytest.importorskip("torch")
pytest.importorskip("snakemake")

import trained_model  # noqa: E402
from realistic_models import SHAPES, write_checkpoint  # noqa: E402

from llama2bin.checks.ccheck import find_compiler  # noqa: E402

SEEDS = (1000, 1001)


def test_default_pipeline_on_stories15M_shapes_and_a_trained_model(tmp_path):
    if find_compiler() is None:
        pytest.skip("no C compiler: the pipeline's C check would be skipped, not run")
    work = tmp_path / "run"
    work.mkdir()
    for name in ("Snakefile", "workflow"):
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, work / name)
    models = {f"s15m-{seed}": write_checkpoint(str(tmp_path / f"s{seed}.pt"), SHAPES["15M"], seed) for seed in SEEDS}
    trained = str(tmp_path / "trained.pt")
    trained_model.train(trained)
    models["trained"] = trained
    lines = ["models:"]
    for name, path in models.items():
        lines += [f"  {name}:", "    source: llama2c", f"    path: {path}"]
    (work / "config.yaml").write_text("\n".join(lines) + "\n")  # every other setting: the defaults
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    summary = json.load(open(work / "reports" / "summary.json"))["files"]
    assert {r["model"] for r in summary} == set(models)
    assert all(r["verified"] for r in summary), summary
    verify = sorted(glob.glob(str(work / "results" / "*" / "*.verify.json")))
    ccheck = sorted(glob.glob(str(work / "results" / "*" / "*.ccheck.json")))
    assert len(verify) == len(ccheck) == len(summary) == 2 * len(models)  # default versions: 0 and 2
    for path in verify:
        v = json.load(open(path))
        assert v["correct"] and v["passed"] and not v["failures"], (path, v["failures"])
        assert not v["quality"]["exceeded"], (path, v["quality"])  # good quantizations: no quality warning
    for path in ccheck:
        c = json.load(open(path))
        assert c["passed"] and c["skipped"] is None, (path, c["failures"])
        if c["arithmetic"] == "q8":  # the teacher-forced comparison ran, and held at float32 tolerance
            assert c["q8_sites"] == (6 * 4 + 1 if "s15m" in path else 2 * 4 + 1)
            assert c["max_abs_diff"] <= c["tolerance"]
    for name in models:
        report = json.load(open(work / "reports" / name / f"{name}.v2.json"))
        assert report["c_check"]["passed"] and report["c_check"]["arithmetic"] == "q8"
