"""Number formatting and the rows every rendering (Markdown, HTML) shares, as plain text.

Renderers escape for their own syntax: Markdown escapes `|`, HTML escapes everything.
"""

from __future__ import annotations

from typing import Any

from ..formats import format_spec
from .record_types import CCheckSection, FunctionalSection, Report
from .records import MB


def num(x: float | None, spec: str = ".3e") -> str:
    """A statistic; a zero loss is shown as 'exact', one not measured as '—'."""
    if x is None:
        return "—"
    return "exact" if x == 0 else format(x, spec)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def mb(size: int) -> str:
    """A size in MB (10^6 bytes) with 3-4 significant digits, from 0.0995 to 13,476."""
    v = size / MB
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def bpw(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def signed(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None else format(x, "+" + spec)


def output_name(r: Report) -> str:
    """How titles name an output ("version 2", "Hugging Face directory"): the format registry's title."""
    return format_spec(r["version"]).title


def encoding_name(r: Report) -> str:
    return f"Q8_0, group size {r['group_size']}" if r["quantized"] else "float32"


def encoding_short(quantized: bool, group_size: int | None) -> str:
    """'Q8_0/64' or 'float32': for table cells."""
    return f"Q8_0/{group_size}" if quantized else "float32"


def shape_rows(r: Report) -> list[tuple[str, str]]:
    """The model's shape (the first 11 rows, dim ... parameters) and identity as (field, value) rows."""
    h = r["model_config"]
    src = r["source"]
    source = f"{src['kind']} checkpoint {src['name']}"
    fetched = src.get("fetched") or {}
    if fetched.get("repo"):
        source += f", {fetched['repo']}@{fetched.get('revision')}"
        if fetched.get("commit") and fetched["commit"] != fetched.get("revision"):
            source += f" (commit {fetched['commit']})"
    elif fetched.get("url"):
        source += f", from {fetched['url']}" + (f" (revision {fetched['revision']})" if fetched.get("revision") else "")
    elif fetched.get("path"):
        source += f", from local path …/{fetched['path']}"
    rows = [
        ("dim", str(h["dim"])), ("hidden_dim", str(h["hidden_dim"])), ("layers", str(h["n_layers"])),
        ("heads", str(h["n_heads"])), ("kv heads", str(h["n_kv_heads"])), ("vocab", str(h["vocab_size"])),
        ("max_seq_len", str(h["max_seq_len"])),
        ("classifier", "shared" if h["shared_classifier"] else "separate"),
        ("rope_theta", f"{h['rope_theta']:g}"), ("norm_eps", f"{h['norm_eps']:g}"),
        ("parameters", f"{r['parameters']:,}"),
        ("source", source),
    ]
    for f in fetched.get("files", []):
        rows.append(("source file", f"{f['path']}: {f['size']:,} bytes, sha256 {f['sha256']}"))
    if r["accepted_departures"]:
        rows.append(("accepted departures", ", ".join(r["accepted_departures"])))
    return rows


def _recipe(recipe: dict[str, str | int | float | None]) -> str:
    kind = recipe.get("kind")
    size = f"{recipe.get('seqs')} × {recipe.get('len')}"
    if kind == "sampled":
        return (f"{size} tokens sampled from the source (seed {recipe.get('seed')}, temperature "
                f"{recipe.get('temperature')}, top-p {recipe.get('top_p')})")
    if kind == "random":
        return f"{size} random token ids (seed {recipe.get('seed')})"
    if kind == "text":
        return f"text {recipe.get('file')} (sha256 {str(recipe.get('file_sha256'))[:16]}…) tokenized, {size}"
    if kind == "file":
        return f"token ids from {recipe.get('file')} (sha256 {str(recipe.get('file_sha256'))[:16]}…)"
    return str(kind)


def eval_description(f: FunctionalSection) -> str:
    """What the logits were compared on, as recorded: recipe, positions, the tokens' sha256."""
    ev = f["eval"]
    text = f"{f['positions']} positions: {_recipe(ev['recipe'])}"
    if ev["sha256"]:
        text += f"; tokens sha256 {ev['sha256'][:16]}…"
    arith = {"f32": "float32 activations", "q8": "Q8_0 activations as runq.c"}.get(f["arithmetic"], f["arithmetic"])
    return f"{text}; {arith}"


def functional_rows(f: FunctionalSection) -> list[tuple[str, str, str]]:
    """(statistic, value, limit) rows of a functional section, perplexity first when measured."""
    q = f["quality"]
    if f["quantized"] and q:
        lim = q["limits"]
        tol = "—"
        limits = {"kld_mean": f"≤ {lim['kld_mean_max']:g}", "p99": f"≤ {lim['kld_p99_max']:g}",
                  "same_top": f"≥ {pct(lim['same_top_min'])}", "ppl_ratio": f"≤ {lim['ppl_ratio_max']:g}"}
    else:
        tol = f"≤ {f['fp32_rtol']:g} × max(1, max |logit|)" if not f["quantized"] else "—"
        limits = {}
    rows = []
    if f["ppl_source"] is not None:
        rows += [
            ("perplexity of the source", f"{f['ppl_source']:.6g}", "—"),
            ("perplexity of this file", f"{f['ppl_file']:.6g}", "—"),
            ("ΔPPL", signed(f["delta_ppl"]), "—"),
            ("PPL ratio", "—" if f["ppl_ratio"] is None else f"{f['ppl_ratio']:.6f}", limits.get("ppl_ratio", "—")),
        ]
    p = f["kld_percentiles"]
    rows += [
        (f"max |Δlogit| (largest |logit| {num(f['max_abs_logit'], '.4g')})", num(f["max_abs_dlogit"]), tol),
        ("mean KL divergence (nats)", num(f["kld_mean"]), limits.get("kld_mean", "—")),
        ("KL divergence median", num(p["p50"]), "—"),
        ("KL divergence 90th percentile", num(p["p90"]), "—"),
        ("KL divergence 99th percentile", num(p["p99"]), limits.get("p99", "—")),
        ("KL divergence 99.9th percentile", num(p["p99.9"]), "—"),
        ("KL divergence max", num(f["kld_max"]), "—"),
        ("same top token", pct(f["same_top"]), limits.get("same_top", "—")),
        ("RMS Δp of the next token", num(f["rms_dp"]), "—"),
    ]
    return rows


def c_check_text(c: CCheckSection | None) -> str | None:
    if not c:
        return None
    how = {"f32": "float32 arithmetic", "q8": "Q8_0 activations and int32 group dot products as runq.c"}.get(
        c["arithmetic"], c["arithmetic"])
    if c["skipped"]:
        outcome = f"SKIPPED ({c['skipped']})"
    elif c["passed"]:
        forced = (f"every activation quantization teacher-forced, a one-step rounding difference only within "
                  f"{c['tie_window']:g} of a tie; " if c.get("tie_window") else "")
        outcome = (f"agrees with the Python reference on {c['positions']} positions "
                   f"({forced}|Δlogit| ≤ {c['rel_tolerance']:g} × max(1, max |logit|))")
    else:
        outcome = "FAILED: disagrees with the Python reference"
    return f"C consumer (c/consumer.c, memory-mapped as llama2.c reads it, {how}): {outcome}"


def c_check_short(c: CCheckSection | None) -> str:
    if not c:
        return "—"
    if c["skipped"]:
        return "skipped"
    return f"agrees ({c['arithmetic']})" if c["passed"] else "FAILED"


def target_rows(r: Report) -> list[list[str]]:
    """The report's target table: the file as measured (the quantization's cost), then each target."""
    def stats(f: Any) -> list[str]:  # a FunctionalSection or a TargetFunctional
        if not f:
            return ["—"] * 4
        p99 = f["kld_p99"] if "kld_p99" in f else (f.get("kld_percentiles") or {}).get("p99")
        return [signed(f.get("delta_ppl")), num(f.get("kld_mean")), num(p99), pct(f["same_top"])]

    f = r["functional"]
    rows = [["this file (source's RoPE)", "the model's", (f or {}).get("arithmetic", "—"), *stats(f), "—"]]
    for t in r.get("targets", []):
        rope = "tables" if t["rope_theta"] is None else f"{t['rope_theta']:g}, no scaling"
        tf = t["functional"]
        rows.append([f"{t['name']} ({t['program']})", rope, tf["arithmetic"] if tf else t["activations"], *stats(tf),
                     "; ".join(t["departures"]) or "none"])
    return rows
