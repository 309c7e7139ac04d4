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
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise Llama2binError(f"{path}: cannot read JSON: {e}") from None


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def _worst_first(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(tensors, key=lambda t: (-(t["rel_err"] or 0.0), -(t["max_abs_err"] or 0.0), t["name"]))


def build_report(model: str, verify_result: dict[str, Any]) -> dict[str, Any]:
    """The tracked report of one model x version, from a `verify --json` result."""
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
        "tensors": tensors,
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
    w = r["worst_tensor"]
    if w and w["rel_err"]:
        lines.append(f"- worst tensor: `{w['name']}` (relative error {_fmt(w['rel_err'])}, SNR {w['snr_db']:.2f} dB)")
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


def write_reports(model: str, verify_paths: list[str], out_dir: str) -> list[str]:
    """reports/{model}/{stem}.json and .md for each `{stem}.verify.json`."""
    written = []
    for path in verify_paths:
        stem = os.path.basename(path).removesuffix(".verify.json").removesuffix(".json")
        report = build_report(model, load_json(path))
        for ext, text in (("json", dump_json(report)), ("md", render_markdown(report))):
            out = os.path.join(out_dir, f"{stem}.{ext}")
            write_atomic(out, text)
            written.append(out)
    return written


def write_summary(report_paths: list[str], out_md: str, out_json: str) -> None:
    """reports/summary.{md,json}: every model x version with size, sha256, outcome, worst error."""
    rows = []
    for path in report_paths:
        r = load_json(path)
        w = r["worst_tensor"] or {}
        rows.append({
            "model": r["model"], "version": r["version"], "file": r["file"], "size": r["size"], "sha256": r["sha256"],
            "verified": r["verified"], "worst_tensor": w.get("name"), "worst_rel_err": w.get("rel_err"),
            "worst_max_abs_err": w.get("max_abs_err"),
        })
    rows.sort(key=lambda r: (r["model"], str(r["version"])))
    write_atomic(out_json, dump_json({"files": rows}))
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
    write_atomic(out_md, "\n".join(lines) + "\n")
