"""Quantization-error reports: tracked, deterministic artifacts built from verification results.

Statistics are rounded to 6 significant digits: enough to show any real change, while last-bit
differences of floating-point sums (BLAS kernels differ between CPUs) never churn a tracked file.
No timestamps, no absolute paths.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .atomic import write_atomic
from .errors import Llama2binError

_SIG = 6
_STAT_KEYS = ("max_abs_err", "rmse", "rel_err", "snr_db")


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.{_SIG}g}")


def load_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise Llama2binError(f"{path}: cannot read JSON: {e}") from None
    if not isinstance(obj, dict):
        raise Llama2binError(f"{path}: expected a JSON object, got a {type(obj).__name__}")
    return obj


def _malformed(path: str, e: Exception) -> Llama2binError:
    """A result JSON of the wrong shape: name the file and the field instead of a traceback."""
    if isinstance(e, KeyError):
        return Llama2binError(f"{path}: not a llama2bin result: missing field {e.args[0]!r}")
    return Llama2binError(f"{path}: not a llama2bin result: a field has the wrong type ({type(e).__name__}: {e})")


_SHAPE_ERRORS = (KeyError, TypeError, AttributeError, ValueError, IndexError)


def _stem(verify_path: str) -> str:
    return os.path.basename(verify_path).removesuffix(".verify.json").removesuffix(".json")


def report_outputs(verify_paths: list[str], out_dir: str, plots: bool = True) -> list[str]:
    """The files write_reports writes, known before reading anything (for the output guard)."""
    exts = ("json", "md", "png") if plots else ("json", "md")
    return [os.path.join(out_dir, f"{_stem(p)}.{ext}") for p in verify_paths for ext in exts]


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def _worst_first(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(tensors, key=lambda t: (-(t["rel_err"] or 0.0), -(t["max_abs_err"] or 0.0), t["name"]))


_FUNCTIONAL_STATS = ("max_abs_logit", "max_abs_dlogit", "kld_mean", "kld_max", "same_top", "rms_dp")


def _functional_section(f: dict[str, Any] | None) -> dict[str, Any] | None:
    """The functional verification of a verify result, rounded like every other statistic."""
    if not f:
        return None
    return {
        **{k: f[k] for k in ("arithmetic", "eval_seqs", "eval_len", "eval_seed", "positions", "quantized")},
        **{k: _round(f[k]) for k in _FUNCTIONAL_STATS},
        "kld_percentiles": {k: _round(v) for k, v in f["kld_percentiles"].items()},
        "kld_hist": f["kld_hist"],
        "kld_hist_edges": [_round(e) for e in f["kld_hist_edges"]],
        "thresholds": {k: _round(v) for k, v in f["thresholds"].items()},
        "passed": f["passed"],
    }


def _c_check_section(c: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the tracked report says of the C consumer check: outcome, arithmetic, tolerance.
    The measured difference stays in results/ (it depends on the compiler)."""
    if not c:
        return None
    from .ccheck import TOLERANCE

    return {"arithmetic": c["arithmetic"], "positions": len(c["tokens"]), "passed": c["passed"], "skipped": c["skipped"],
            "rel_tolerance": TOLERANCE.get(c["arithmetic"])}


def build_report(model: str, verify_result: dict[str, Any], c_check: dict[str, Any] | None = None,
                 plot: str | None = None) -> dict[str, Any]:
    """The tracked report of one model x version, from a `verify --json` result (and a
    `c-check --json` result; `plot` names the figure written next to the report)."""
    tensors = [
        {"name": t["name"], "shape": t["shape"], "encoding": t["encoding"], "group_size": t["group_size"],
         **{k: _round(t[k]) for k in _STAT_KEYS}}
        for t in _worst_first(verify_result["tensors"])
    ]
    worst = tensors[0] if tensors else None
    return {
        "model": model,
        "version": verify_result["version"],
        "file": verify_result["file"],
        "size": verify_result["size"],
        "sha256": verify_result["sha256"],
        "verified": verify_result["passed"],
        "failures": verify_result["failures"],
        "group_size": verify_result["group_size"],
        "header": verify_result["header"],  # the file's own header (config.json for an hf directory)
        "model_config": verify_result["source"]["config"],
        "source": {"kind": verify_result["source"]["kind"], "name": verify_result["source"]["name"]},
        "accepted_departures": verify_result["source"]["config"].get("accepted_departures", []),
        "worst_tensor": worst,
        "functional": _functional_section(verify_result.get("functional")),
        "c_check": _c_check_section(c_check),
        "plot": plot,
        "tensors": tensors,
        # only when they say something (the demo reports stay as they are): a source that was already
        # Q8_0, and v0 rope tables at a base run.c ignores
        **({"source_quantized": verify_result["source_quantized"]} if verify_result.get("source_quantized") else {}),
        **({"rope_tables": rope} if (rope := verify_result.get("rope_tables")) and not rope["all_readers_agree"] else {}),
    }


def _fmt(x: float | None, spec: str = ".3e") -> str:
    return "exact" if x is None or x == 0 else format(x, spec)


def render_markdown(r: dict[str, Any]) -> str:
    h = r["model_config"]
    status = "passed" if r["verified"] else "FAILED: " + "; ".join(r["failures"])
    lines = [
        f"# {r['model']} — {'Hugging Face directory' if r['version'] == 'hf' else 'version ' + str(r['version'])}",
        "",
        f"- file: `{r['file']}` ({r['size']} bytes), sha256 `{r['sha256']}`",
        f"- source: {r['source']['kind']} `{r['source']['name']}`",
        f"- header: dim {h['dim']}, hidden_dim {h['hidden_dim']}, {h['n_layers']} layers, {h['n_heads']} heads "
        f"({h['n_kv_heads']} kv), vocab {h['vocab_size']}, max_seq_len {h['max_seq_len']}, "
        f"classifier {'shared' if h['shared_classifier'] else 'separate'}, rope_theta {h['rope_theta']:g}",
        f"- quantization: {'Q8_0, group size ' + str(r['group_size']) if r['group_size'] else 'none (float32)'}",
        f"- round-trip verification: {status}",
    ]
    if r["accepted_departures"]:
        lines.append(f"- accepted departures from the format: {', '.join(r['accepted_departures'])}")
    if r.get("source_quantized"):
        sq = r["source_quantized"]
        lines.append(f"- the source was already Q8_0 (version {sq['format']}, group size {sq['group_size']}): float32 "
                     "outputs hold its dequantized values, not the original weights")
    if r.get("rope_tables"):
        rope = r["rope_tables"]
        lines.append(f"- rope tables at rope_theta {rope['theta']:g}: right for readers that use them "
                     f"({', '.join(rope['read_from_table_by'])}); ignored by {', '.join(rope['ignored_by'])} (10000)")
    w = r["worst_tensor"]
    if w and w["rel_err"]:
        lines.append(f"- worst tensor: `{w['name']}` (relative error {_fmt(w['rel_err'])}, SNR {w['snr_db']:.2f} dB)")
    lines += _functional_lines(r.get("functional"))
    lines += _c_check_lines(r.get("c_check"))
    if r.get("plot"):
        lines += ["", f"![per-tensor relative error, per-group error, KL divergence]({r['plot']})"]
    lines += [
        "",
        "Per tensor, worst first. Relative error is ‖w−ŵ‖/‖w‖; SNR is 10·log10(‖w‖²/‖w−ŵ‖²).",
        "",
        "| tensor | shape | encoding | max abs error | RMSE | relative error | SNR (dB) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for t in r["tensors"]:
        enc = f"q8_0/{t['group_size']}" if t["encoding"] == "q8_0" else "f32"
        snr = "∞" if t["snr_db"] is None else f"{t['snr_db']:.2f}"
        lines.append(
            f"| `{t['name']}` | {'×'.join(map(str, t['shape']))} | {enc} | {_fmt(t['max_abs_err'])} | "
            f"{_fmt(t['rmse'])} | {_fmt(t['rel_err'])} | {snr} |"
        )
    return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _functional_lines(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return ["- functional verification: not run"]
    lim = f["thresholds"]
    status = "passed" if f["passed"] else "**FAILED**"
    arith = {"f32": "float32 activations", "q8": "Q8_0 activations as runq.c"}[f["arithmetic"]]
    lines = [
        f"- functional verification: {status} — logits of this file vs the source on {f['positions']} positions "
        f"({f['eval_seqs']} × {f['eval_len']} random tokens, seed {f['eval_seed']}), {arith}",
        "",
        "| statistic | value | limit |",
        "| --- | ---: | ---: |",
    ]
    if f["quantized"]:
        tol = "—"
        limits = {"kld_mean": f"≤ {lim['kld_mean_max']:g}", "p99": f"≤ {lim['kld_p99_max']:g}",
                  "same_top": f"≥ {_pct(lim['same_top_min'])}"}
    else:
        tol = f"≤ {lim['fp32_rtol']:g} × max(1, max \\|logit\\|)"
        limits = {}
    p = f["kld_percentiles"]
    rows = [
        ("max \\|Δlogit\\| (largest \\|logit\\| " + _fmt(f["max_abs_logit"], ".4g") + ")", _fmt(f["max_abs_dlogit"]), tol),
        ("mean KL divergence (nats)", _fmt(f["kld_mean"]), limits.get("kld_mean", "—")),
        ("KL divergence median", _fmt(p["p50"]), "—"),
        ("KL divergence 90th percentile", _fmt(p["p90"]), "—"),
        ("KL divergence 99th percentile", _fmt(p["p99"]), limits.get("p99", "—")),
        ("KL divergence 99.9th percentile", _fmt(p["p99.9"]), "—"),
        ("KL divergence max", _fmt(f["kld_max"]), "—"),
        ("same top token", _pct(f["same_top"]), limits.get("same_top", "—")),
        ("RMS Δp of the source's top token", _fmt(f["rms_dp"]), "—"),
    ]
    lines += [f"| {name} | {value} | {limit} |" for name, value, limit in rows]
    return lines + [""]


def _c_check_lines(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    how = {"f32": "float32 arithmetic", "q8": "Q8_0 activations and int32 group dot products as runq.c"}[c["arithmetic"]]
    if c["skipped"]:
        outcome = f"SKIPPED ({c['skipped']})"
    elif c["passed"]:
        outcome = (f"agrees with the Python reference on {c['positions']} positions "
                   f"(\\|Δlogit\\| ≤ {c['rel_tolerance']:g} × max(1, max \\|logit\\|))")
    else:
        outcome = "**FAILED**: disagrees with the Python reference"
    return [f"- C consumer (`c/consumer.c`, memory-mapped as llama2.c reads it, {how}): {outcome}"]


def write_reports(model: str, verify_paths: list[str], out_dir: str, c_check_paths: list[str] | None = None,
                  plots: bool = True) -> list[str]:
    """reports/{model}/{stem}.json, .md and (with `plots`) .png for each `{stem}.verify.json`;
    a `{stem}.ccheck.json` among `c_check_paths` adds the C consumer check."""
    from .verify import HIST_EDGES

    c_checks = {os.path.basename(p).removesuffix(".ccheck.json"): p for p in c_check_paths or []}
    stems = [_stem(p) for p in verify_paths]
    for stem in sorted(set(c_checks) - set(stems)):
        raise Llama2binError(f"{c_checks[stem]}: no {stem}.verify.json among the verification results")
    contents: list[tuple[str, str | bytes]] = []  # every report built before any is written: all or nothing
    for path, stem in zip(verify_paths, stems, strict=True):
        result = load_json(path)
        c_check = load_json(c_checks[stem]) if stem in c_checks else None
        try:
            report = build_report(model, result, c_check, plot=f"{stem}.png" if plots else None)
            outputs: list[tuple[str, str | bytes]] = [("json", dump_json(report)), ("md", render_markdown(report))]
            if plots:
                from .plots import render_png

                label = "Hugging Face directory" if report["version"] == "hf" else f"version {report['version']}"
                tensors = [{**t, "rel_err": _round(t["rel_err"])} for t in result["tensors"]]
                png = render_png(f"{model} — {label}", tensors, report["model_config"]["n_layers"], HIST_EDGES,
                                 report["functional"])
                outputs.append(("png", png))
        except _SHAPE_ERRORS as e:
            raise _malformed(f"{path} or {c_checks[stem]}" if stem in c_checks else path, e) from None
        contents += [(os.path.join(out_dir, f"{stem}.{ext}"), data) for ext, data in outputs]
    for out, data in contents:
        write_atomic(out, data)
    return [out for out, _ in contents]


def _summary_row(r: dict[str, Any]) -> dict[str, Any]:
    w = r["worst_tensor"] or {}
    f = r.get("functional")
    c = r.get("c_check")
    return {
        "model": r["model"], "version": r["version"], "file": r["file"], "size": r["size"], "sha256": r["sha256"],
        "verified": r["verified"], "worst_tensor": w.get("name"), "worst_rel_err": w.get("rel_err"),
        "worst_max_abs_err": w.get("max_abs_err"),
        "functional": None if not f else {
            "arithmetic": f["arithmetic"], "positions": f["positions"], "max_abs_dlogit": f["max_abs_dlogit"],
            "kld_mean": f["kld_mean"], "kld_p99": f["kld_percentiles"]["p99"], "kld_max": f["kld_max"],
            "same_top": f["same_top"], "rms_dp": f["rms_dp"], "passed": f["passed"]},
        "c_check": None if not c else {"arithmetic": c["arithmetic"], "passed": c["passed"], "skipped": c["skipped"]},
    }


def write_summary(report_paths: list[str], out_md: str, out_json: str) -> None:
    """reports/summary.{md,json}: every model x version with size, sha256, outcome, worst error."""
    rows = []
    for path in report_paths:
        r = load_json(path)
        try:
            rows.append(_summary_row(r))
        except _SHAPE_ERRORS as e:
            raise _malformed(path, e) from None
    rows.sort(key=lambda r: (r["model"], str(r["version"])))
    try:
        markdown = _summary_markdown(rows)
    except _SHAPE_ERRORS as e:  # a field of the right name but the wrong type
        raise _malformed(" or ".join(report_paths), e) from None
    write_atomic(out_json, dump_json({"files": rows}))
    write_atomic(out_md, markdown)


def _summary_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Summary",
        "",
        "| model | version | size (bytes) | sha256 | verified | worst tensor | relative error | max abs error |",
        "| --- | --- | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['version']} | {r['size']} | `{r['sha256'][:16]}…` | "
            f"{'yes' if r['verified'] else '**no**'} | {('`' + r['worst_tensor'] + '`') if r['worst_rel_err'] else '—'} | "
            f"{_fmt(r['worst_rel_err'])} | {_fmt(r['worst_max_abs_err'])} |"
        )
    lines += [
        "",
        "## Functional verification",
        "",
        "Logits of each file against the source's on a seeded set of random token sequences (same numpy forward pass; "
        "KL divergence of the source's distribution to the file's, per position; Δp is the change in probability of "
        "the source's top token). C check: llama2bin's C consumer memory-maps the file as llama2.c does and must "
        "reproduce the Python logits.",
        "",
        "| model | version | arithmetic | positions | max \\|Δlogit\\| | mean KLD | KLD p99 | KLD max | same top | "
        "RMS Δp | functional | C check |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        f, c = r["functional"], r["c_check"]
        check = "—" if not c else "skipped" if c["skipped"] else f"agrees ({c['arithmetic']})" if c["passed"] else "**FAILED**"
        if not f:
            lines.append(f"| {r['model']} | {r['version']} | — | — | — | — | — | — | — | — | not run | {check} |")
            continue
        lines.append(
            f"| {r['model']} | {r['version']} | {f['arithmetic']} | {f['positions']} | {_fmt(f['max_abs_dlogit'])} | "
            f"{_fmt(f['kld_mean'])} | {_fmt(f['kld_p99'])} | {_fmt(f['kld_max'])} | {_pct(f['same_top'])} | "
            f"{_fmt(f['rms_dp'])} | {'passed' if f['passed'] else '**FAILED**'} | {check} |"
        )
    return "\n".join(lines) + "\n"
