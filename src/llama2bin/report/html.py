"""Self-contained HTML pages: one per model and one summary, for `snakemake --report`.

Snakemake's report viewer shows an HTML result in an iframe loaded from a data URI (Markdown is
only a download link there), so a page cannot link a figure next to it: figures are embedded as
base64 PNG data URIs and the styles are inline. Every text that comes from a file or a config is
escaped. Deterministic: no dates, no absolute paths, figures byte-identical render to render.
"""

from __future__ import annotations

import base64
from html import escape

from .fmt import (
    bpw,
    c_check_short,
    c_check_text,
    encoding_name,
    encoding_short,
    eval_description,
    functional_rows,
    mb,
    num,
    pct,
    shape_rows,
    signed,
    target_rows,
)
from .record_types import ModelRow, Quantization, Report, SummaryRow
from .records import correct_verdict, distinct_quantizations, quality_exceeded, quality_verdict, same_as

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; margin: 16px 20px;
       max-width: 1100px; }
h1 { font-size: 1.6em; margin: 0 0 .3em; } h2 { font-size: 1.25em; margin: 1.4em 0 .4em;
     border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; margin: 1.1em 0 .3em; }
table { border-collapse: collapse; margin: .4em 0 .8em; font-variant-numeric: tabular-nums; font-size: 13.5px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 7px; vertical-align: top; }
td { white-space: nowrap; } table.kv td, td:last-child { white-space: normal; }
th { background: #f2f4f7; text-align: left; font-weight: 600; }
td.r, th.r { text-align: right; white-space: nowrap; }
table.kv th { width: 11em; }
code { font-size: .92em; }
.ok { color: #116329; font-weight: 600; } .bad { color: #b3261e; font-weight: 700; }
.warn { color: #9a6700; font-weight: 600; } .note { color: #555; }
.fail { border: 2px solid #b3261e; background: #fdecea; padding: 6px 10px; }
img { max-width: 100%; height: auto; display: block; margin: .4em 0; }
details summary { cursor: pointer; margin: .3em 0; }
"""


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _table(header: list[str], align: str, rows: list[list[str]], raw: bool = False, cls: str = "") -> str:
    """An HTML table; `align` has one character per column, 'l' or 'r'. Cells are escaped unless
    `raw` (cells then built by this module from escaped parts)."""
    def cell(tag: str, text: str, a: str) -> str:
        attr = ' class="r"' if a == "r" else ""
        return f"<{tag}{attr}>{text if raw else escape(text)}</{tag}>"

    out = [f'<table class="{cls}">' if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(cell("th", escape(h) if raw else h, a) for h, a in zip(header, align, strict=True))
                   + "</tr>")
    out += ["<tr>" + "".join(cell("td", c, a) for c, a in zip(row, align, strict=True)) + "</tr>" for row in rows]
    return "\n".join(out + ["</table>"])


def _kv_table(rows: list[tuple[str, str]]) -> str:
    return "<table class=\"kv\">\n" + "\n".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows) + "\n</table>"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt=\"{escape(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"


def _quality_class(verdict: str) -> str:
    if verdict in ("exact", "within limits"):
        return "ok"
    if verdict.startswith("above limits"):
        return "bad" if "gate" in verdict else "warn"
    return "note"


def _verdict_cells(r: Report) -> tuple[str, str]:
    correct, why = correct_verdict(r)
    c = "<span class=\"ok\">yes</span>" if correct else f"<span class=\"bad\">NO</span>: {escape(why)}"
    q = quality_verdict(r)
    q_cls = _quality_class(q)
    return c, f"<span class=\"{q_cls}\">{escape(q)}</span>"


def _outputs_table(reports: list[Report]) -> str:
    rows = []
    for r in reports:
        f = r["functional"]
        correct, quality = _verdict_cells(r)
        rows.append([
            f"<b>{escape(r['label'])}</b>", escape(encoding_short(r["quantized"], r["group_size"])), mb(r["size"]),
            bpw(r["bits_per_weight"]),
            correct, quality,
            "—" if not f else signed(f["delta_ppl"]) if r["quantized"] else "exact",
            num(f["kld_mean"]) if f else "—",
            num(f["kld_percentiles"]["p99"]) if f else "—",
            pct(f["same_top"]) if f else "—",
            escape(c_check_short(r["c_check"])),
        ])
    return _table(["output", "encoding", "size (MB)", "bits/weight", "correct", "quality", "ΔPPL", "mean KLD",
                   "KLD p99", "same top", "C check"], "llrrllrrrrl", rows, raw=True)


def _files_table(reports: list[Report]) -> str:
    rows = [[r["label"], r["file"], f"{r['size']:,}", r["sha256"], r["read_by"] or "—"] for r in reports]
    return _table(["output", "file", "bytes", "sha256", "read by"], "llrll", rows)


def _exact_note(reports: list[Report]) -> str | None:
    exact = [r["label"] for r in reports if not r["quantized"]]
    if not exact:
        return None
    return (f"{', '.join(exact)}: float32, exact — every tensor bit-identical to the source and the logits "
            "identical, so they have no error to plot.")


def _tensor_table(r: Report) -> str:
    quantized = [t for t in r["tensors"] if t["encoding"] != "f32"]
    rows = [[t["name"], "×".join(map(str, t["shape"])), num(t["max_abs_err"]), num(t["rmse"]), num(t["rel_err"]),
             "∞" if t["snr_db"] is None else f"{t['snr_db']:.2f}"] for t in quantized]
    table = _table(["tensor", "shape", "max abs error", "RMSE", "relative error", "SNR (dB)"], "llrrrr", rows)
    exact = len(r["tensors"]) - len(quantized)
    tail = f"<p class=\"note\">{exact} float32 tensors (the norms) are bit-identical to the source.</p>" if exact else ""
    return (f"<details><summary>Per-tensor error of all {len(quantized)} Q8_0 tensors, worst first "
            "(relative error ‖w−ŵ‖/‖w‖; SNR 10·log10(‖w‖²/‖w−ŵ‖²))</summary>\n" + table + tail + "</details>")


def render_model_html(model: str, reports: list[Report], figure_png: bytes | None) -> str:
    """The page of one model: overview, every output with its verdicts, the figure (one row per
    distinct quantization), and per quantization its logit statistics and per-tensor errors."""
    first = reports[0]
    groups = distinct_quantizations(reports)
    rows = shape_rows(first)
    n_shape = 11  # dim ... parameters: one horizontal row; source and the rest as key/value lines
    shape = _table([k for k, _ in rows[:n_shape]], "r" * n_shape, [[v for _, v in rows[:n_shape]]])
    overview = rows[n_shape:]
    sizes = sorted({r["group_size"] for r in reports if r["group_size"]})
    overview += [
        ("Q8_0 group size", ", ".join(map(str, sizes)) or "— (float32 only)"),
        ("outputs", ", ".join(f"{r['label']} ({r['file']})" for r in reports)),
        ("llama2bin", first["llama2bin"]),
    ]
    f = next((r["functional"] for r in reports if r["functional"]), None)
    if f:
        overview.append(("evaluation tokens", eval_description(f)))
    body = [f"<h1>{escape(model)}</h1>", "<h2>Overview</h2>", shape, _kv_table(overview), "<h2>Outputs</h2>"]
    failed = [(r, why) for r in reports for ok, why in [correct_verdict(r)] if not ok]
    for r, why in failed:
        body.append(f"<p class=\"fail\">{escape(r['label'])} is NOT correct: {escape(why)}</p>")
    for r in reports:
        if quality_exceeded(r):
            body.append(f"<p class=\"{_quality_class(quality_verdict(r))}\">{escape(r['label'])}: quality "
                        f"{escape(quality_verdict(r))}: {escape('; '.join(quality_exceeded(r)))}</p>")
    body.append(_outputs_table(reports))
    for r in reports:
        if r.get("targets"):
            body.append(f"<p>{escape(r['label'])} as the programs it is for compute it (their RoPE, epsilon and "
                        "activations), against the source; the first row is the file's own cost:</p>")
            body.append(_table(["run by", "RoPE", "activations", "ΔPPL", "mean KLD", "KLD p99", "same top", "departure"],
                               "lllrrrrl", target_rows(r)))
    notes = [n for n in (_exact_note(reports),) if n]
    sq = first.get("source_quantized")
    if sq:
        notes.append(f"The source was already Q8_0 (version {sq['format']}, group size {sq['group_size']}): float32 "
                     "outputs hold its dequantized values, not the original weights.")
    for r in reports:
        rope = r.get("rope_tables")
        if rope:
            scaled = f" with {rope['scaling']['rope_type']} scaling (factor {rope['scaling']['factor']:g})" \
                if rope.get("scaling") else ""
            notes.append(f"{r['label']}: rope tables at rope_theta {rope['theta']:g}{scaled}, right for readers that use them "
                         f"({', '.join(rope['read_from_table_by'])}); ignored by {', '.join(rope['ignored_by'])} "
                         "(10000).")
    if len(groups) < sum(r["quantized"] for r in reports):
        notes.append("Outputs joined by “=” hold identical weights (the same Q8_0 values and scales in another "
                     "layout): they are shown once.")
    body += [f"<p class=\"note\">{escape(n)}</p>" for n in notes]
    body += ["<h3>Files</h3>", _files_table(reports)]
    if figure_png:
        body += ["<h2>Figure</h2>",
                 "<p class=\"note\">Per distinct quantization. Left: relative error of every Q8_0 matrix by layer "
                 "(emb: token embeddings, cls: a separate classifier). Middle: the largest absolute error in every "
                 "Q8_0 group, over all tensors. Right: KL divergence from the source's next-token distribution to "
                 "the file's, per evaluation position.</p>",
                 _img(figure_png, f"{model}: quantization error and KL divergence")]
    for group in groups:
        r = group[0]
        body.append(f"<h2>{escape(same_as(group))}: {escape(encoding_name(r))}</h2>")
        fr = r["functional"]
        if fr:
            body.append(f"<p>Logits against the source on {escape(eval_description(fr))}.</p>")
            body.append(_table(["statistic", "value", "limit"], "lrr", [list(x) for x in functional_rows(fr)]))
        for g in group:
            c = c_check_text(g["c_check"])
            if c:
                body.append(f"<p>{escape(g['label'])}: {escape(c)}</p>")
        body.append(_tensor_table(r))
    return _page(f"llama2bin — {model}", body)


def render_summary_html(rows: list[SummaryRow], models: list[ModelRow], quantizations: list[Quantization],
                        figure_png: bytes | None, quality_axis: str) -> str:
    """The summary page: every model's shape, the size/quality figure, every output's verdicts,
    and the logit statistics of every distinct quantization (`quantizations`: model, label
    'v1 = v2', bits_per_weight, functional section or None)."""
    exact = [f"{r['model']} {r['label']}" for r in rows if not r["quantized"]]
    exact_note = (f"Float32 outputs ({', '.join(exact)}) are exact: logits identical to the source's."
                  if exact else "")
    body = ["<h1>llama2bin summary</h1>",
            "<p><b>Correct</b> (a hard failure): header, round trip against the source, the C consumer reading "
            "the file as llama2.c does, and exact logits for float32 files. <b>Quality</b> (measured, a warning "
            "above its limits unless gated): the loss of a quantized file against the source.</p>",
            "<h2>Models</h2>"]
    mrows = [[m["model"], f"{m['parameters']:,}", str(m["dim"]), str(m["hidden_dim"]), str(m["n_layers"]),
              f"{m['n_heads']} / {m['n_kv_heads']}", str(m["vocab_size"]), str(m["max_seq_len"]),
              m["group_size"], m["source"]] for m in models]
    body.append(_table(["model", "parameters", "dim", "hidden_dim", "layers", "heads / kv", "vocab", "max_seq_len",
                        "Q8_0 group", "source"], "lrrrrrrrrl", mrows))
    if figure_png:
        body += ["<h2>Size against quality</h2>",
                 f"<p class=\"note\">One point per distinct quantization of each model (outputs with identical "
                 f"weights share a point, labelled v1 = v2); quality is {escape(quality_axis)}. Float32 outputs are "
                 "exact and listed in the table only.</p>",
                 _img(figure_png, "bits per weight against quality")]
    body.append("<h2>Outputs</h2>")
    table = []
    for r in rows:
        correct = "<span class=\"ok\">yes</span>" if r["correct"] else "<span class=\"bad\">NO</span>"
        q_cls = _quality_class(r["quality"])
        table.append([escape(r["model"]), f"<b>{escape(r['label'])}</b>", escape(r["encoding"]), mb(r["size"]),
                      bpw(r["bits_per_weight"]), correct, f"<span class=\"{q_cls}\">{escape(r['quality'])}</span>",
                      escape(c_check_short(r["c_check"])), escape(r["worst_tensor"] or "—") if r["worst_rel_err"]
                      else "—", num(r["worst_rel_err"])])
    body.append(_table(["model", "output", "encoding", "size (MB)", "bits/weight", "correct", "quality", "C check",
                        "worst tensor", "relative error"], "lllrrlllll", table, raw=True))
    body.append("<p class=\"note\">Sizes in MB (10<sup>6</sup> bytes); bits per weight = file size × 8 / "
                "parameters, headers and rope tables included. Relative error: ‖w−ŵ‖/‖w‖ of the worst tensor. "
                "Each model's page has every statistic and every tensor.</p>")
    body += ["<h2>Logits against the source</h2>",
             "<p>One row per distinct quantization (outputs holding identical weights share a row). "
             f"{escape(exact_note)}</p>"]
    table = []
    for q in quantizations:
        f = q["functional"]
        if not f:
            table.append([q["model"], q["label"], "not measured", *["—"] * 8])
            continue
        ratio = f["ppl_ratio"]
        table.append([q["model"], q["label"], signed(f["delta_ppl"]),
                      "—" if ratio is None else f"{ratio:.5f}", num(f["kld_mean"]),
                      num(f["kld_percentiles"]["p99"]), num(f["kld_max"]), pct(f["same_top"]), num(f["rms_dp"]),
                      num(f["max_abs_dlogit"]), str(f["positions"])])
    body.append(_table(["model", "outputs", "ΔPPL", "PPL ratio", "mean KLD", "KLD p99", "KLD max", "same top",
                        "RMS Δp", "max |Δlogit|", "positions"], "llrrrrrrrrr", table))
    return _page("llama2bin — summary", body)
