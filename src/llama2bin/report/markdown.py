"""Markdown renderings of the reports: one per model x output, and the summary. They are what a
reader of the repository sees on a code host; the Snakemake HTML report shows html.py's pages."""

from __future__ import annotations

from .fmt import (
    bpw,
    c_check_short,
    c_check_text,
    encoding_name,
    eval_description,
    functional_rows,
    mb,
    num,
    output_name,
    pct,
    shape_rows,
    signed,
    target_rows,
)
from .record_types import Quantization, Report, SummaryRow
from .records import correct_verdict, quality_exceeded, quality_verdict


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table; `align` has one character per column: 'l' or 'r'."""
    lines = ["| " + " | ".join(_esc(h) for h in header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    return lines + ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]


def render_markdown(r: Report) -> str:
    """The report of one model x output."""
    correct, checked = correct_verdict(r)
    shape = dict(shape_rows(r))
    lines = [
        f"# {r['model']} — {output_name(r)}",
        "",
        f"- file: `{r['file']}`, {mb(r['size'])} MB ({r['size']} bytes), {bpw(r['bits_per_weight'])} bits per weight, "
        f"sha256 `{r['sha256']}`",
        f"- source: {shape['source']}",
        f"- shape: dim {shape['dim']}, hidden_dim {shape['hidden_dim']}, {shape['layers']} layers, {shape['heads']} heads "
        f"({shape['kv heads']} kv), vocab {shape['vocab']}, max_seq_len {shape['max_seq_len']}, "
        f"classifier {shape['classifier']}, rope_theta {shape['rope_theta']}, {shape['parameters']} parameters",
        f"- quantization: {encoding_name(r)}",
        f"- correct: {'yes (' + checked + ')' if correct else '**NO**: ' + checked}",
        f"- quality: {quality_verdict(r)}" + "".join(f"; {x}" for x in quality_exceeded(r)),
    ]
    if r["accepted_departures"]:
        lines.append(f"- accepted departures from the format: {', '.join(r['accepted_departures'])}")
    if sq := r.get("source_quantized"):
        lines.append(f"- the source was already Q8_0 (version {sq['format']}, group size {sq['group_size']}): float32 "
                     "outputs hold its dequantized values, not the original weights")
    if rope := r.get("rope_tables"):
        scaled = f" with {rope['scaling']['rope_type']} scaling (factor {rope['scaling']['factor']:g})" \
            if rope.get("scaling") else ""
        lines.append(f"- rope tables at rope_theta {rope['theta']:g}{scaled}: right for readers that use them "
                     f"({', '.join(rope['read_from_table_by'])}); ignored by {', '.join(rope['ignored_by'])} (10000)")
    w = r["worst_tensor"]
    if w and w["rel_err"]:
        lines.append(f"- worst tensor: `{w['name']}` (relative error {num(w['rel_err'])}, SNR {w['snr_db']:.2f} dB)")
    f = r["functional"]
    if f and not r["quantized"] and f["passed"]:
        # float32 and within its tolerance: said once, not as a table of zeros
        same = "identical to" if not f["max_abs_dlogit"] else f"within {f['fp32_rtol']:g} × max(1, max \\|logit\\|) of"
        lines.append(f"- functional verification: logits {same} the source's on {eval_description(f)}")
    elif f:
        lines += [f"- functional verification: logits of this file vs the source on {eval_description(f)}", ""]
        lines += _table(["statistic", "value", "limit"], "lrr", [list(row) for row in functional_rows(f)])
        lines.append("")
    else:
        lines.append("- functional verification: not run")
    c = c_check_text(r["c_check"])
    if c:
        lines.append(f"- {_esc(c)}")
    if r.get("targets"):
        lines += ["", "As the programs this file is for compute it (their RoPE, epsilon and activations), against the "
                  "source; the first row is the file's own cost (the source's RoPE, float32 activations):", ""]
        lines += _table(["run by", "RoPE", "activations", "ΔPPL", "mean KLD", "KLD p99", "same top", "departure"],
                        "lllrrrrl", target_rows(r))
    if r["plot"]:
        lines += ["", f"![relative error by layer, largest error per Q8_0 group, KL divergence]({r['plot']})"]
    # tensors with an error, worst first; bit-identical float32 tensors in one line
    lossy = [t for t in r["tensors"] if t["encoding"] != "f32" or t["max_abs_err"] or t["rel_err"]]
    exact = len(r["tensors"]) - len(lossy)
    if exact:
        what = f"every tensor ({exact})" if not lossy else f"{exact} float32 tensors (the norms)"
        lines += ["", f"- {what} bit-identical to the source"]
    if lossy:
        lines += ["", "Per tensor, worst first. Relative error is ‖w−ŵ‖/‖w‖; SNR is 10·log10(‖w‖²/‖w−ŵ‖²).", ""]
        rows = []
        for t in lossy:
            enc = f"q8_0/{t['group_size']}" if t["encoding"] == "q8_0" else "f32"
            snr = "∞" if t["snr_db"] is None else f"{t['snr_db']:.2f}"
            rows.append([f"`{t['name']}`", "×".join(map(str, t["shape"])), enc, num(t["max_abs_err"]), num(t["rmse"]),
                         num(t["rel_err"]), snr])
        lines += _table(["tensor", "shape", "encoding", "max abs error", "RMSE", "relative error", "SNR (dB)"],
                        "lllrrrr", rows)
    return "\n".join(lines) + "\n"


def render_summary_markdown(rows: list[SummaryRow], quantizations: list[Quantization], figure: str | None) -> str:
    """Every model x output with its size and verdicts; the logit statistics of every distinct
    quantization (`quantizations` as summary.py builds them: model, label 'v1 = v2', functional)."""
    lines = ["# Summary", ""]
    if figure:
        lines += [f"![bits per weight against quality]({figure})", ""]
    lines += ["Correct: header, round trip against the source, C consumer, exact float32 logits (a hard failure). "
              "Quality: the loss a quantized file has against the source (measured; float32 files are exact).", ""]
    table = []
    for r in rows:
        table.append([r["model"], r["label"], r["encoding"], mb(r["size"]), bpw(r["bits_per_weight"]),
                      f"`{r['sha256'][:16]}…`", "yes" if r["correct"] else "**NO**", r["quality"],
                      c_check_short(r["c_check"]), f"`{r['worst_tensor']}`" if r["worst_rel_err"] else "—",
                      num(r["worst_rel_err"])])
    lines += _table(["model", "output", "encoding", "size (MB)", "bits/weight", "sha256", "correct", "quality",
                     "C check", "worst tensor", "relative error"], "lllrrlllllr", table)
    exact = [f"{r['model']} {r['label']}" for r in rows if not r["quantized"]]
    lines += ["", "## Logits against the source", "",
              "Each distinct quantization (outputs holding identical weights share a row) against the source on the "
              "model's evaluation tokens, same numpy forward pass: perplexity, KL divergence of the source's "
              "next-token distribution to the file's per position, same top token, RMS Δp of the next token."
              + (f" Float32 outputs ({', '.join(exact)}) are exact." if exact else ""), ""]
    table = []
    for q in quantizations:
        f = q["functional"]
        if not f:
            table.append([q["model"], q["label"], "not measured", *["—"] * 10])
            continue
        ratio = f["ppl_ratio"]
        table.append([q["model"], q["label"], f["arithmetic"], str(f["positions"]),
                      "—" if f["ppl_source"] is None else f"{f['ppl_source']:.5g}", signed(f["delta_ppl"]),
                      "—" if ratio is None else f"{ratio:.5f}", num(f["kld_mean"]),
                      num(f["kld_percentiles"]["p99"]), num(f["kld_max"]), pct(f["same_top"]),
                      num(f["rms_dp"]), num(f["max_abs_dlogit"])])
    lines += _table(["model", "outputs", "arithmetic", "positions", "PPL source", "ΔPPL", "PPL ratio", "mean KLD",
                     "KLD p99", "KLD max", "same top", "RMS Δp", "max |Δlogit|"], "lllrrrrrrrrrr", table)
    return "\n".join(lines) + "\n"
