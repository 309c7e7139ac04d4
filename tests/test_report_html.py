"""Reports a researcher reads: the HTML pages, the figures, and what `snakemake --report` shows.

The numbers in the pages are checked against independently obtained values: parameter counts
from the checkpoint's own tensors (torch), sizes from the file system, statistics from the
verify JSON the checks wrote.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from helpers import ROOT, run_cli

from llama2bin.demo import write_demo_checkpoint


class _Text(HTMLParser):
    """The visible text of a page (what a reader sees), and its images."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.images: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")


def page_text(html: str) -> tuple[str, list[str]]:
    parser = _Text()
    parser.feed(html)
    return " ".join(parser.parts), parser.images


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """One demo model (untied classifier) exported as v0, v1 and v2, verified, C-checked and reported."""
    root = tmp_path_factory.mktemp("rep")
    ckpt = str(root / "m.pt")
    write_demo_checkpoint("untied", ckpt)
    bins = [str(root / f"m.v{v}.bin") for v in (0, 1, 2)]
    verify = [str(root / f"m.v{v}.verify.json") for v in (0, 1, 2)]
    ccheck = [str(root / f"m.v{v}.ccheck.json") for v in (0, 1, 2)]
    for args in (("export", *bins, "--checkpoint", ckpt, "--version", "0", "1", "2", "--quiet"),
                 ("verify", *bins, "--checkpoint", ckpt, "--json", *verify, "--quiet"),
                 ("c-check", *bins, "--json", *ccheck),
                 ("report", *verify, "--c-check", *ccheck, "--model", "m", "--out-dir", str(root / "out")),
                 ("summary", *(str(root / "out" / f"m.v{v}.json") for v in (0, 1, 2)), "--md", str(root / "s.md"),
                  "--json", str(root / "s.json"), "--html", str(root / "s.html"), "--figure", str(root / "s.png"))):
        proc = run_cli(*args)
        assert proc.returncode == 0, (args[0], proc.stderr)
    return root, ckpt, bins


def test_model_page_shows_every_output_once_and_identical_weights_once(reported):
    root, ckpt, bins = reported
    import torch

    reports = [json.load(open(root / "out" / f"m.v{v}.json")) for v in (0, 1, 2)]
    # parameters counted independently, from the checkpoint's own tensors
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    params = sum(t.numel() for t in state.values())
    assert all(r["parameters"] == params for r in reports)
    for r, path in zip(reports, bins, strict=True):
        assert r["size"] == os.path.getsize(path)
        assert r["bits_per_weight"] == pytest.approx(8 * os.path.getsize(path) / params, rel=1e-5)
    v0, v1, v2 = reports
    assert v1["weights_fingerprint"] == v2["weights_fingerprint"] != v0["weights_fingerprint"]
    assert (v0["plot"], v1["plot"], v2["plot"]) == (None, "m.png", "m.png")

    text, images = page_text((root / "out" / "m.html").read_text())
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")  # self-contained: one figure
    png = base64.b64decode(images[0].split(",", 1)[1])
    assert png == (root / "out" / "m.png").read_bytes()
    assert text.count("v1 = v2: Q8_0, group size 64") == 1  # the quantization section appears once
    for r in reports:
        assert r["sha256"] in text and f"{r['size']:,}" in text
    f = v1["functional"]
    assert f"{f['kld_mean']:.3e}" in text and f"{f['kld_percentiles']['p99']:.3e}" in text
    assert "v0: float32, exact" in text
    assert f"{params:,}" in text and "Per-tensor error of all 16 Q8_0 tensors" in text


def test_summary_page_has_the_numbers_and_one_point_per_quantization(reported):
    root, _, _ = reported
    rows = json.load(open(root / "s.json"))["files"]
    text, images = page_text((root / "s.html").read_text())
    assert len(images) == 1 and base64.b64decode(images[0].split(",", 1)[1]) == (root / "s.png").read_bytes()
    v1 = next(r for r in rows if r["label"] == "v1")
    assert f"{v1['functional']['kld_mean']:.3e}" in text and f"{v1['bits_per_weight']:.2f}" in text
    assert "v1 = v2" in text and text.count(f"{v1['functional']['kld_max']:.3e}") == 1  # one row, not two
    assert [r["correct"] for r in rows] == [True, True, True]
    assert [r["quality"] for r in rows] == ["exact", "within limits", "within limits"]
    md = (root / "s.md").read_text()
    assert "![bits per weight against quality](s.png)" in md


def test_pages_escape_what_they_quote(reported):
    from llama2bin.report.html import render_model_html

    report = json.load(open(reported[0] / "out" / "m.v1.json"))
    report["model"] = report["source"]["name"] = "<script>alert(1)</script>"
    html = render_model_html(report["model"], [report], None)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_figures_are_byte_identical_render_to_render(reported):
    root, _, _ = reported
    first = {n: (root / "out" / n).read_bytes() for n in ("m.png", "m.html")}
    proc = run_cli("report", *(str(root / f"m.v{v}.verify.json") for v in (0, 1, 2)),
                   "--c-check", *(str(root / f"m.v{v}.ccheck.json") for v in (0, 1, 2)),
                   "--model", "m", "--out-dir", str(root / "again"))
    assert proc.returncode == 0, proc.stderr
    assert first == {n: (root / "again" / n).read_bytes() for n in ("m.png", "m.html")}
    assert b"Software" not in first["m.png"] and str(root).encode() not in first["m.html"]


def _embedded(report_html: str, filename: str) -> str:
    """The page `filename` as Snakemake's report embeds it (a base64 data URI the viewer puts in an iframe)."""
    m = re.search(r"data:text/html;charset=[\w-]+;filename=" + re.escape(filename) + r";base64,([A-Za-z0-9+/=]+)",
                  report_html)
    assert m, f"{filename} is not embedded as an HTML page"
    return base64.b64decode(m.group(1)).decode()


@pytest.mark.slow
def test_snakemake_report_shows_summary_numbers_in_its_pages(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    for name in ("Snakefile", "workflow"):
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, workdir / name)
    (workdir / "config.yaml").write_text("models: {u: {source: llama2c, demo: untied}}\nversions: [0, 2]\n")

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir,
                              capture_output=True, text=True)

    run = snakemake()
    assert run.returncode == 0, run.stderr[-3000:]
    built = snakemake("--report", "report.html")
    assert built.returncode == 0, built.stderr[-3000:]
    report_html = (workdir / "report.html").read_text()
    rows = {r["label"]: r for r in json.load(open(workdir / "reports/summary.json"))["files"]}
    summary_text, _ = page_text(_embedded(report_html, "summary.html"))
    f = rows["v2"]["functional"]
    assert f"{f['kld_mean']:.3e}" in summary_text and f"{f['kld_p99']:.3e}" in summary_text
    assert f"{rows['v2']['bits_per_weight']:.2f}" in summary_text and f"{rows['v0']['size'] / 1e6:.3g}" in summary_text
    model_text, images = page_text(_embedded(report_html, "u.html"))
    assert rows["v2"]["sha256"] in model_text and len(images) == 1


def test_a_fetched_source_is_identified_without_absolute_paths(reported, tmp_path):
    root, _, _ = reported
    record = {"model": "m", "kind": "path", "path": str(tmp_path / "private" / "m.pt"), "checkpoint": "m.pt",
              "files": [{"path": "m.pt", "sha256": "ab" * 32, "size": 1234}]}
    (tmp_path / "SOURCE.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    proc = run_cli("report", *(str(root / f"m.v{v}.verify.json") for v in (0, 1, 2)), "--model", "m",
                   "--out-dir", str(out), "--no-plots", "--source-record", str(tmp_path / "SOURCE.json"))
    assert proc.returncode == 0, proc.stderr
    for name in ("m.v1.json", "m.html"):
        text = (out / name).read_text()
        assert "ab" * 32 in text and str(tmp_path) not in text
    text, images = page_text((out / "m.html").read_text())
    assert "ab" * 32 in text and "1,234 bytes" in text and images == []  # --no-plots: no figure


def _hostile_variants(verify: dict) -> dict[str, tuple[bytes, str]]:
    """Malformed verification results: a field missing, of the wrong type, not JSON, NaN; with
    what `report`'s error must say after the file's name."""
    missing = {k: v for k, v in verify.items() if k != "tensors"}
    wrong_type = {**verify, "functional": {**verify["functional"], "kld_percentiles": [1, 2]}}
    return {
        "missing-tensors": (json.dumps(missing).encode(), "missing field 'tensors'"),
        "percentiles-a-list": (json.dumps(wrong_type).encode(),
                               "functional.kld_percentiles must be an object, got a list"),
        "not-json": (b"{\"file\": ", "not valid JSON"),
        "nan": (json.dumps(verify).replace('"kld_mean": ', '"kld_mean": NaN, "x": ', 1).encode(), "NaN"),
        "a-list": (b"[1, 2, 3]", "must be an object, got a list"),
    }


def test_malformed_results_get_one_error_line_and_no_output(reported, tmp_path):
    from hostile_harness import HostileCase, run_hostile

    root, _, _ = reported
    good = json.load(open(root / "m.v1.verify.json"))
    for name, (data, what) in _hostile_variants(good).items():
        bad = tmp_path / f"{name}.v1.verify.json"
        bad.write_bytes(data)
        out = tmp_path / f"out-{name}"
        outputs = [str(out / f"{name}.v1.json"), str(out / f"{name}.v1.md"), str(out / "m.html"), str(out / "m.png")]
        proc = run_hostile(HostileCase(f"report {name}", ["report", str(bad), "--model", "m", "--out-dir", str(out)],
                                       inputs=[str(bad)], outputs=outputs, needle=str(bad)))
        assert what in proc.stderr, (name, proc.stderr)
        report = tmp_path / f"{name}.report.json"
        report.write_bytes(data)
        outputs = [str(tmp_path / f"s-{name}.{ext}") for ext in ("md", "json", "html", "png")]
        run_hostile(HostileCase(f"summary {name}", ["summary", str(report), "--md", outputs[0], "--json", outputs[1],
                                                    "--html", outputs[2], "--figure", outputs[3]],
                                inputs=[str(report)], outputs=outputs, needle=str(report)))
