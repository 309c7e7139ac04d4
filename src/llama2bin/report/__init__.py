"""Reports a researcher reads: per model x output JSON and Markdown, a self-contained HTML page
and a figure per model, and a summary across models (JSON, Markdown, HTML, size/quality figure).

records.py turns verification results into report records (the only reader of the checks'
JSON); fmt.py formats numbers; markdown.py, html.py and plots.py render; summary.py gathers.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ..atomic import write_atomic
from ..checks.verification import Verification
from ..errors import Llama2binError
from .record_types import Report
from .records import (
    build_report,
    distinct_quantizations,
    dump_json,
    load_c_check,
    load_verification,
    round_sig,
    same_as,
    source_record,
)
from .summary import write_summary

__all__ = ["build_report", "report_outputs", "write_reports", "write_summary"]


def _stem(verify_path: str) -> str:
    return os.path.basename(verify_path).removesuffix(".verify.json").removesuffix(".json")


def report_outputs(model: str, verify_paths: list[str], out_dir: str, plots: bool = True) -> list[str]:
    """The files write_reports writes, known before reading anything (for the output guard)."""
    per_output = [os.path.join(out_dir, f"{_stem(p)}.{ext}") for p in verify_paths for ext in ("json", "md")]
    return per_output + [os.path.join(out_dir, f"{model}.{ext}") for ext in (("png", "html") if plots else ("html",))]


def write_reports(model: str, verify_paths: list[str], out_dir: str, c_check_paths: list[str] | None = None,
                  plots: bool = True, source_record_path: str | None = None) -> list[str]:
    """For each `{stem}.verify.json`: {stem}.json and {stem}.md in `out_dir`; a `{stem}.ccheck.json`
    among `c_check_paths` adds the C consumer check, a fetch's SOURCE.json where the source came
    from. With `plots` also {model}.png (one row per distinct quantization); always {model}.html,
    the page of the model (figure embedded)."""
    c_checks = {os.path.basename(p).removesuffix(".ccheck.json"): p for p in c_check_paths or []}
    stems = [_stem(p) for p in verify_paths]
    for stem in sorted(set(c_checks) - set(stems)):
        raise Llama2binError(f"{c_checks[stem]}: no {stem}.verify.json among the verification results")
    # Every result is loaded (and checked, field by field) before anything is rendered.
    results = [load_verification(p) for p in verify_paths]
    c_results = {stem: load_c_check(c_checks[stem]) for stem in stems if stem in c_checks}
    figure = f"{model}.png" if plots else None
    fetched = source_record(source_record_path) if source_record_path else None
    reports = [build_report(model, result, c_results.get(stem), plot=figure, source=fetched)
               for result, stem in zip(results, stems, strict=True)]
    return _write(model, out_dir, stems, results, reports, plots)


def _write(model: str, out_dir: str, stems: list[str], results: list[Verification], reports: list[Report],
           plots: bool) -> list[str]:
    """Render everything first, then write: a rendering error leaves no file behind."""
    from ..checks.tensor import HIST_EDGES
    from .html import render_model_html
    from .markdown import render_markdown

    outputs: list[tuple[str, str | bytes]] = []
    for report, stem in zip(reports, stems, strict=True):
        outputs += [(f"{stem}.json", dump_json(report)), (f"{stem}.md", render_markdown(report))]
    png = None
    if plots:
        from .plots import FigureRow, render_model_png, render_notice_png

        by_fingerprint = {r["weights_fingerprint"]: res for r, res in zip(reports, results, strict=True)}
        rows: list[FigureRow] = [
            {"title": f"{same_as(g)} (Q8_0, group size {g[0]['group_size']}, {g[0]['bits_per_weight']:.2f} bits/weight)",
             "tensors": [replace(t, rel_err=round_sig(t.rel_err))
                         for t in by_fingerprint[g[0]["weights_fingerprint"]].tensor.tensors],
             "functional": g[0]["functional"]}
            for g in distinct_quantizations(reports)]
        n_layers = reports[0]["model_config"]["n_layers"] if reports else 0
        png = render_model_png(model, rows, n_layers, HIST_EDGES) if rows else None
        # The figure is a declared output; a model with float32 outputs only gets a notice in it
        # (its page says "exact" instead of showing the file).
        outputs.append((f"{model}.png", png if png is not None else
                        render_notice_png(f"{model}: every output is float32 and exact; nothing to plot")))
    outputs.append((f"{model}.html", render_model_html(model, reports, png)))
    written = []
    for name, data in outputs:
        out = os.path.join(out_dir, name)
        write_atomic(out, data)
        written.append(out)
    return written
