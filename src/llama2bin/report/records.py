"""The tracked report of one model x output, built from verification results.

This is the only module of report/ that reads the checks' results: verify and C-check JSON load
into the checks' own types (`Verification.from_json`, `CCheckResult.from_json`), checked field by
field at load, so a malformed result is one error naming the file and the field and nothing
below has to guard itself. markdown, html, plots and summary read the typed report records built
here (record_types.py).

Statistics are rounded to 6 significant digits: enough to show any real change. The checks
compute them the same on every machine (checks/numerics.py), so the rounding is for reading, not
to hide last-bit noise. No timestamps, no absolute paths.
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__, typed_json
from ..checks.ccheck import CCheckResult
from ..checks.tensor import TensorStats
from ..checks.verification import Verification
from ..formats import format_spec, json_version
from .record_types import (
    CCheckSection,
    FetchedSection,
    FunctionalSection,
    Report,
    SourceRecordJson,
    TargetSection,
    TensorRow,
)

_SIG = 6
MB = 1_000_000  # sizes are shown in MB (10^6 bytes), as model files are quoted


def round_sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.{_SIG}g}")


def _round(x: float) -> float:
    return float(f"{x:.{_SIG}g}")


def _strict_json(path: str, what: str) -> Any:
    """Strict JSON (safe_io's rules: a regular file, size-capped, finite numbers, unique keys)."""
    from ..safe_io import load_json as strict_load

    return strict_load(path, what)


def load_verification(path: str) -> Verification:
    """A `verify --json` result, every field checked at load (Verification.from_json)."""
    return Verification.from_json(_strict_json(path, "verification result"), path)


def load_c_check(path: str) -> CCheckResult:
    """A `c-check --json` result, every field checked at load."""
    return CCheckResult.from_json(_strict_json(path, "C check result"), path)


def load_report(path: str) -> Report:
    """A report JSON that build_report wrote, every field checked at load."""
    value = _strict_json(path, "report")
    report: Report = typed_json.check(value, Report, path)
    typed_json.derived(value, "version", json_version(report["format"]), path)
    return report


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def _worst_first(tensors: list[TensorStats]) -> list[TensorStats]:
    return sorted(tensors, key=lambda t: (-t.rel_err, -t.max_abs_err, t.name))


def _functional_section(v: Verification) -> FunctionalSection | None:
    """The functional check of a verification and its quality verdict, rounded like every other statistic."""
    f, q = v.functional, v.quality
    if f is None:
        return None
    limits = q and q.limits.to_json()
    return {
        "arithmetic": f.arithmetic, "eval": f.eval, "positions": f.positions, "predicted": f.predicted,
        "quantized": f.quantized,
        "max_abs_logit": _round(f.max_abs_logit), "max_abs_dlogit": _round(f.max_abs_dlogit),
        "kld_mean": _round(f.kld_mean), "kld_max": _round(f.kld_max), "same_top": _round(f.same_top),
        "rms_dp": round_sig(f.rms_dp), "ppl_source": round_sig(f.ppl_source), "ppl_file": round_sig(f.ppl_file),
        "delta_ppl": round_sig(f.delta_ppl), "ppl_ratio": round_sig(f.ppl_ratio),
        "kld_percentiles": {k: _round(x) for k, x in f.kld_percentiles.items()},  # type: ignore[misc]
        "kld_hist": f.kld_hist,
        "kld_hist_edges": [_round(e) for e in f.kld_hist_edges],
        "fp32_rtol": f.fp32_rtol,
        "quality": q and limits and {"limits": {k: _round(x) for k, x in limits.items()},  # type: ignore[misc]
                                     "gate": q.gate, "exceeded": q.exceeded, "passed": q.passed},
        "passed": f.passed,
    }


_TARGET_STATS = ("delta_ppl", "ppl_ratio", "kld_mean", "same_top", "rms_dp", "max_abs_dlogit")


def targets_section(v: Verification) -> list[TargetSection]:
    """verify --target: per target program, what it hard-codes, the departures accepted and the
    quality as it computes the file (rounded), beside the file's own cost."""
    out: list[TargetSection] = []
    for t in v.targets or []:
        f = t.functional
        out.append({
            "name": t.name, "program": t.program, "rope_theta": t.rope_theta, "activations": t.activations,
            "norm_eps": t.norm_eps, "tokenizer": t.tokenizer, "ports": t.ports,
            "departures": t.departures, "warnings": t.warnings,
            "functional": None if f is None else {
                "arithmetic": f.arithmetic, "positions": f.positions, "kld_p99": round_sig(f.kld_percentiles["p99"]),
                **{k: round_sig(getattr(f, k)) for k in _TARGET_STATS}},  # type: ignore[typeddict-item]
        })
    return out


def c_check_section(c: CCheckResult | None) -> CCheckSection | None:
    """What the tracked report says of the C consumer check: outcome, arithmetic, tolerances (q8:
    also the tie window of its teacher-forced activations). The measured differences and q8 flips
    stay in results/ (they depend on the compiler)."""
    if c is None:
        return None
    from ..checks.ccheck import TOLERANCE
    from ..checks.q8_forcing import TIE_WINDOW

    section: CCheckSection = {
        "arithmetic": c.arithmetic, "positions": len(c.tokens), "passed": None if c.skipped else c.passed,
        "skipped": c.skipped, "rel_tolerance": TOLERANCE.get(c.arithmetic) if c.arithmetic else None}
    if c.arithmetic == "q8":
        section["tie_window"] = TIE_WINDOW
    return section


def _weights_fingerprint(v: Verification) -> str:
    """Equal for two outputs that hold the same weights (v1 and v2 store the same Q8_0 values and
    scales in a different order), so a figure is drawn once per distinct quantization: the verify
    JSON's `weights_sha256`, taken over the bytes of every weight in canonical order during the
    round trip (checks/tensor.py). Its statistics are then equal too: every check computes the
    same bits from the same weights. An output whose header failed (no weights read) is
    fingerprinted by its own sha256."""
    return (v.tensor.weights_sha256 or v.tensor.sha256)[:16]


def output_label(version: int | str) -> str:
    """'v0', 'v1', 'v1f', ... for .bin versions, 'hf' for the Hugging Face directory (the registry's label)."""
    return format_spec(version).label


def source_record(path: str) -> FetchedSection:
    """What a fetch's SOURCE.json says of where the checkpoint came from, for the reports: the
    repo/revision/commit or URL, and every checkpoint file's sha256 and size (fields checked at
    load). Not the record's own sha256: it holds the checkpoint's path relative to the working
    directory, so it changes with where the pipeline runs while the checkpoint does not. A local
    path is reduced to its last component (no absolute paths in tracked reports)."""
    import os

    value = _strict_json(path, "SOURCE.json record")
    record = typed_json.check(value, SourceRecordJson, path)
    out: FetchedSection = {}
    for key in ("kind", "repo", "revision", "commit", "url"):
        if isinstance(text := record.get(key), str):
            out[key] = text  # type: ignore[literal-required]
    if record.get("path"):
        out["path"] = os.path.basename(os.path.normpath(record["path"]))  # type: ignore[arg-type]
    if "files" in record:
        out["files"] = [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in record["files"]]
    return out


def build_report(model: str, v: Verification, c_check: CCheckResult | None = None, plot: str | None = None,
                 source: FetchedSection | None = None) -> Report:
    """The tracked report of one model x output, from a verification (`load_verification` of a
    `verify --json` result) and a C check (`load_c_check`). `plot` names the model's figure when
    this output appears in it; `source` is `source_record()` of the fetch's SOURCE.json, when there is one."""
    t = v.tensor
    tensors: list[TensorRow] = [
        {"name": s.name, "shape": s.shape, "encoding": s.encoding, "group_size": s.group_size,
         "max_abs_err": _round(s.max_abs_err), "rmse": _round(s.rmse), "rel_err": _round(s.rel_err),
         "snr_db": round_sig(s.snr_db)}
        for s in _worst_first(t.tensors)
    ]
    parameters = sum(_prod(s.shape) for s in t.tensors)
    quantized = any(s.encoding != "f32" for s in t.tensors)
    config = t.source["config"]
    described = {k: x for k, x in t.source.items() if k != "config"}
    report: Report = {
        "model": model,
        "version": t.version,
        "format": t.format,
        "read_by": _read_by(t.format),
        "label": output_label(t.version),
        "file": t.file,
        "size": t.size,
        "size_mb": _round(t.size / MB),
        # File bits per model weight, headers and rope tables included (llama.cpp's convention of
        # file size over parameter count): what the storage actually costs per weight.
        "parameters": parameters,
        "bits_per_weight": _round(8 * t.size / parameters) if parameters else None,
        "sha256": t.sha256,
        "quantized": quantized,
        "weights_fingerprint": _weights_fingerprint(v),
        # correct: header, round trip, float32 logits (the C check is added from its own result)
        "verified": v.correct,
        "failures": v.failures,
        "group_size": t.group_size,
        "header": t.header,  # the file's own header (config.json for an hf directory)
        "model_config": config,
        "source": {**described, **({"fetched": source} if source else {})},  # type: ignore[typeddict-item]
        # with --target: the departures of the programs that read this file; else the source's
        "accepted_departures": list(dict.fromkeys(d for tr in v.targets for d in tr.departures)) if v.targets
        else config["accepted_departures"],
        "llama2bin": __version__,
        "worst_tensor": tensors[0] if tensors else None,
        "functional": _functional_section(v),
        "c_check": c_check_section(c_check),
        "plot": plot if quantized else None,
        "tensors": tensors,
    }
    # only when they say something (the demo reports stay as they are): a source that was already
    # Q8_0 (binsrc), and v0 rope tables at a base run.c ignores
    if t.source_quantized:
        report["source_quantized"] = t.source_quantized
    if t.rope_tables and not t.rope_tables["all_readers_agree"]:
        report["rope_tables"] = t.rope_tables
    if targets := targets_section(v):
        report["targets"] = targets
    return report


def _read_by(name: str) -> str | None:
    from ..formats import FORMATS

    spec = FORMATS.get(name)
    return spec.read_by if spec else None


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def correct_verdict(r: Report) -> tuple[bool, str]:
    """The hard verdict: header and round trip, the C consumer, and (float32) exact logits.
    Returns (correct, one line saying what was checked or what failed)."""
    problems = list(r["failures"])
    c = r["c_check"]
    if c and not c["skipped"] and not c["passed"]:
        problems.append("the C consumer disagrees with the Python reference")
    f = r["functional"]
    if f and not r["quantized"] and not f["passed"] and not problems:
        problems.append("float32 logits differ from the source")
    if problems:
        return False, "; ".join(problems)
    checked = ["round trip"] + (["C consumer"] if c and not c["skipped"] else []) + \
        (["exact logits"] if f and not r["quantized"] else [])
    return True, " + ".join(checked)


def quality_verdict(r: Report) -> str:
    """'exact' (float32), 'within limits', 'above limits' (a warning), 'above limits: gate
    failed' (the user made the limits a gate), or 'not measured'."""
    f = r["functional"]
    if not r["quantized"]:
        return "exact"
    q = f and f["quality"]
    if not q:
        return "not measured"
    if not q["exceeded"]:
        return "within limits"
    return "above limits: gate failed" if q["gate"] else "above limits (warning)"


def quality_exceeded(r: Report) -> list[str]:
    f = r["functional"]
    q = f and f["quality"]
    return list(q["exceeded"]) if q else []


def distinct_quantizations(reports: list[Report]) -> list[list[Report]]:
    """The quantized outputs of one model grouped by identical weights, in output order."""
    groups: dict[str, list[Report]] = {}
    for r in reports:
        if r["quantized"]:
            groups.setdefault(r["weights_fingerprint"], []).append(r)
    return list(groups.values())


def same_as(group: list[Report]) -> str:
    """'v1 = v2' for a group of outputs holding identical weights."""
    return " = ".join(r["label"] for r in group)
