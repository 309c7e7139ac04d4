"""reports/summary.{json,md,html,png}: every model x output in one place."""

from __future__ import annotations

import os

from ..atomic import write_atomic
from .fmt import encoding_short
from .record_types import FunctionalSection, ModelRow, Quantization, Report, SummaryFunctional, SummaryRow
from .records import (
    correct_verdict,
    distinct_quantizations,
    dump_json,
    load_report,
    quality_exceeded,
    quality_verdict,
    same_as,
)


def _version_key(r: Report) -> tuple[str, int, str]:
    """Model, then the registry's order of formats (v0, v1, 1f, v2, hf)."""
    from ..formats import FORMATS

    order = list(FORMATS)
    name = str(r["version"])
    return r["model"], order.index(name) if name in order else len(order), name


def _summary_functional(f: FunctionalSection) -> SummaryFunctional:
    return {"arithmetic": f["arithmetic"], "positions": f["positions"], "max_abs_dlogit": f["max_abs_dlogit"],
            "kld_mean": f["kld_mean"], "kld_max": f["kld_max"], "same_top": f["same_top"], "rms_dp": f["rms_dp"],
            "ppl_source": f["ppl_source"], "ppl_file": f["ppl_file"], "delta_ppl": f["delta_ppl"],
            "ppl_ratio": f["ppl_ratio"], "passed": f["passed"], "kld_p99": f["kld_percentiles"]["p99"]}


def summary_row(r: Report) -> SummaryRow:
    """One line of summary.json: a report's identity, size, verdicts and headline statistics."""
    w = r["worst_tensor"]
    f = r["functional"]
    c = r["c_check"]
    correct, _ = correct_verdict(r)
    return {
        "model": r["model"], "version": r["version"], "label": r["label"], "file": r["file"], "size": r["size"],
        "size_mb": r["size_mb"], "bits_per_weight": r["bits_per_weight"],
        "encoding": encoding_short(r["quantized"], r["group_size"]), "group_size": r["group_size"],
        "quantized": r["quantized"],
        "sha256": r["sha256"], "verified": r["verified"], "correct": correct, "quality": quality_verdict(r),
        "quality_exceeded": quality_exceeded(r),
        "worst_tensor": w and w["name"], "worst_rel_err": w and w["rel_err"], "worst_max_abs_err": w and w["max_abs_err"],
        "functional": f and _summary_functional(f),
        "c_check": c and {"arithmetic": c["arithmetic"], "passed": c["passed"], "skipped": c["skipped"]},
    }


def _model_row(r: Report, reports: list[Report]) -> ModelRow:
    h = r["model_config"]
    sizes = sorted({x["group_size"] for x in reports if x["group_size"]})
    return {"model": r["model"], "parameters": r["parameters"], "dim": h["dim"], "hidden_dim": h["hidden_dim"],
            "n_layers": h["n_layers"], "n_heads": h["n_heads"], "n_kv_heads": h["n_kv_heads"],
            "vocab_size": h["vocab_size"], "max_seq_len": h["max_seq_len"],
            "group_size": ", ".join(map(str, sizes)) or "—", "source": f"{r['source']['kind']} {r['source']['name']}"}


def write_summary(report_paths: list[str], out_md: str, out_json: str, out_html: str | None = None,
                  out_png: str | None = None) -> None:
    """The summary of every report JSON given: JSON and Markdown always; with `out_png` the
    size-against-quality figure, with `out_html` the page the Snakemake report shows. Everything
    is rendered before anything is written: a malformed report leaves no file behind."""
    reports = [load_report(path) for path in report_paths]  # every field checked at load
    outputs = _render(sorted(reports, key=_version_key), out_md, out_json, out_html, out_png)
    for path, data in outputs:
        write_atomic(path, data)


def _render(reports: list[Report], out_md: str, out_json: str, out_html: str | None,
            out_png: str | None) -> list[tuple[str, str | bytes]]:
    from .html import render_summary_html
    from .markdown import render_summary_markdown

    rows = [summary_row(r) for r in reports]
    by_model: dict[str, list[Report]] = {}
    for r in reports:
        by_model.setdefault(r["model"], []).append(r)
    quantizations: list[Quantization] = [
        {"model": m, "label": same_as(g), "bits_per_weight": g[0]["bits_per_weight"], "functional": g[0]["functional"]}
        for m, rs in by_model.items() for g in distinct_quantizations(rs)]
    points = [q for q in quantizations if q["functional"]]
    outputs: list[tuple[str, str | bytes]] = [(out_json, dump_json({"files": rows}))]
    png = None
    quality_axis = ""
    if out_png:
        from .plots import render_notice_png, render_tradeoff_png, tradeoff_axis

        _, quality_axis, _ = tradeoff_axis(points)
        # The figure file is a declared output: without a quantized output it still exists, but
        # holds only a notice, and the pages do not show it.
        png = render_tradeoff_png(points) if points else None
        outputs.append((out_png, png if png is not None else render_notice_png("no quantized output: nothing to compare")))
    figure = os.path.basename(out_png) if png is not None and out_png else None
    outputs.append((out_md, render_summary_markdown(rows, quantizations, figure)))
    if out_html:
        models = [_model_row(rs[0], rs) for rs in by_model.values()]
        outputs.append((out_html, render_summary_html(rows, models, quantizations, png, quality_axis)))
    return outputs
