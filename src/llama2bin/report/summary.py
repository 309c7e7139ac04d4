"""reports/summary.{json,md,html,png}: every model x output in one place."""

from __future__ import annotations

import os
from typing import Any

from ..atomic import write_atomic
from .fmt import encoding_short
from .records import (
    MALFORMED,
    correct_verdict,
    distinct_quantizations,
    dump_json,
    load_json,
    malformed,
    quality_exceeded,
    quality_verdict,
    same_as,
)

_SUMMARY_FUNCTIONAL = ("arithmetic", "positions", "max_abs_dlogit", "kld_mean", "kld_max", "same_top", "rms_dp",
                       "ppl_source", "ppl_file", "delta_ppl", "ppl_ratio", "passed")


def _version_key(r: dict[str, Any]) -> tuple[str, int, str]:
    """Model, then the registry's order of formats (v0, v1, 1f, v2, hf)."""
    from ..formats import FORMATS

    order = list(FORMATS)
    name = str(r["version"])
    return r["model"], order.index(name) if name in order else len(order), name


def summary_row(r: dict[str, Any]) -> dict[str, Any]:
    """One line of summary.json: a report's identity, size, verdicts and headline statistics."""
    w = r["worst_tensor"] or {}
    f = r.get("functional")
    c = r.get("c_check")
    correct, _ = correct_verdict(r)
    return {
        "model": r["model"], "version": r["version"], "label": r["label"], "file": r["file"], "size": r["size"],
        "size_mb": r["size_mb"], "bits_per_weight": r["bits_per_weight"],
        "encoding": encoding_short(r), "group_size": r["group_size"],
        "quantized": r["quantized"],
        "sha256": r["sha256"], "verified": r["verified"], "correct": correct, "quality": quality_verdict(r),
        "quality_exceeded": quality_exceeded(r),
        "worst_tensor": w.get("name"), "worst_rel_err": w.get("rel_err"), "worst_max_abs_err": w.get("max_abs_err"),
        "functional": None if not f else {
            **{k: f[k] for k in _SUMMARY_FUNCTIONAL if k in f}, "kld_p99": f["kld_percentiles"]["p99"]},
        "c_check": None if not c else {"arithmetic": c["arithmetic"], "passed": c["passed"], "skipped": c["skipped"]},
        **({"llamacpp": r["llamacpp"]} if r.get("llamacpp") else {}),
    }


def _model_row(r: dict[str, Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    h = r["model_config"]
    sizes = sorted({x["group_size"] for x in reports if x["group_size"]})
    return {"model": r["model"], "parameters": r["parameters"], **{k: h[k] for k in (
        "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")},
        "group_size": ", ".join(map(str, sizes)) or "—", "source": f"{r['source']['kind']} {r['source']['name']}"}


def write_summary(report_paths: list[str], out_md: str, out_json: str, out_html: str | None = None,
                  out_png: str | None = None) -> None:
    """The summary of every report JSON given: JSON and Markdown always; with `out_png` the
    size-against-quality figure, with `out_html` the page the Snakemake report shows. Everything
    is rendered before anything is written: a malformed report leaves no file behind."""
    reports = []
    for path in report_paths:
        r = load_json(path, "report")
        try:
            summary_row(r)
        except MALFORMED as e:
            raise malformed(path, e) from None
        reports.append(r)
    try:
        outputs = _render(sorted(reports, key=_version_key), out_md, out_json, out_html, out_png)
    except MALFORMED as e:
        raise malformed(", ".join(report_paths), e) from None
    for path, data in outputs:
        write_atomic(path, data)


def _render(reports: list[dict[str, Any]], out_md: str, out_json: str, out_html: str | None,
            out_png: str | None) -> list[tuple[str, str | bytes]]:
    from .html import render_summary_html
    from .markdown import render_summary_markdown

    rows = [summary_row(r) for r in reports]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        by_model.setdefault(r["model"], []).append(r)
    quantizations = [{"model": m, "label": same_as(g), "bits_per_weight": g[0]["bits_per_weight"],
                      "functional": g[0].get("functional")}
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
