"""bench/run.py in its smoke mode: it builds its checkpoints, runs every job, and writes a
well-formed report. Nothing here asserts a timing: only that the numbers exist and make sense."""

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # runs the benchmark end to end


def _table(md: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after `heading`."""
    section = md.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_smoke_benchmark_writes_a_complete_report(tmp_path):
    results, raw = tmp_path / "results.md", tmp_path / "raw.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), "--scale", "smoke", "--repeats", "1",
         "--work", str(tmp_path / "work"), "--results", str(results), "--json", str(raw)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = results.read_text()
    assert proc.stdout == md  # the report is also printed
    for heading in ("## Machine", "## Export", "## Verify", "## Process baselines", "## Memory per job"):
        assert heading in md
    assert re.search(r"- cpus \(nproc\): \d+", md) and "- numpy: " in md and "- disk: " in md
    assert str(tmp_path) not in md  # no absolute paths in a tracked artifact

    export = _table(md, "## Export")
    header, rows = export[0], export[1:]
    assert header[:6] == ["model", "shape", "source", "versions", "output MB", "export s"]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (m, kind, v) for m, kind in (("tiny", "llama2c"), ("tiny-hf", "hf")) for v in ("0", "1", "2", "0,1,2")
    ]
    for r in rows:
        assert len(r) == len(header)
        out_mb, wall, cp, peak, cpu = float(r[4]), float(r[5]), float(r[6]), float(r[11]), float(r[12])
        assert out_mb > 0 and wall > 0 and cp >= 0 and peak > 1 and cpu > 0
    # all versions in one job write what the three single jobs write
    for model in ("tiny", "tiny-hf"):
        mine = {r[3]: float(r[4]) for r in rows if r[0] == model}
        assert abs(mine["0,1,2"] - (mine["0"] + mine["1"] + mine["2"])) < 0.2

    verify = _table(md, "## Verify")
    assert [(r[0], r[1]) for r in verify[1:]] == [(m, v) for m in ("tiny", "tiny-hf") for v in ("0", "1", "2")]
    for r in verify[1:]:
        assert float(r[4]) > 0 and float(r[6]) > 1  # verify seconds, peak MiB

    memory = _table(md, "## Memory per job")
    assert [r[0] for r in memory[1:]] == ["tiny", "tiny-hf"]
    assert all(float(c) > 1 for r in memory[1:] for c in r[2:])

    data = json.loads(raw.read_text())
    assert len(data["rows"]) == 8 and all(len(r["export"]) == 1 for r in data["rows"])
    assert {"python + numpy + llama2bin", "import torch"} <= set(data["baselines"])
    # the checkpoints were built where asked, and no output is left behind
    assert sorted(os.listdir(tmp_path / "work" / "cache")) == ["tiny-hf", "tiny-hf.stamp.json", "tiny.pt", "tiny.stamp.json"]
    assert os.listdir(tmp_path / "work" / "out") == []
