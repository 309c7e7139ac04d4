"""The tracked report of one model x output, built from verification results.

This is the only module of report/ that reads verify and C-check JSON; markdown, html, plots and
summary read the report records built here, so a change of the checks' JSON touches one file.

Statistics are rounded to 6 significant digits: enough to show any real change. The checks
compute them the same on every machine (checks/numerics.py), so the rounding is for reading, not
to hide last-bit noise. No timestamps, no absolute paths.
"""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from ..errors import Llama2binError
from ..formats import format_spec

_SIG = 6
_STAT_KEYS = ("max_abs_err", "rmse", "rel_err", "snr_db")
# Functional statistics copied (rounded) into the report when the verify JSON has them; the
# perplexity fields come with realistic evaluation tokens (issue 13) and are absent before.
_FUNCTIONAL_STATS = ("max_abs_logit", "max_abs_dlogit", "kld_mean", "kld_max", "same_top", "rms_dp",
                     "ppl_source", "ppl_file", "delta_ppl", "ppl_ratio")
_FUNCTIONAL_INFO = ("arithmetic", "eval", "positions", "predicted", "quantized")
MB = 1_000_000  # sizes are shown in MB (10^6 bytes), as model files are quoted


def round_sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.{_SIG}g}")


def load_json(path: str, what: str = "verification result") -> dict[str, Any]:
    """Strict JSON (safe_io's rules: a regular file, size-capped, finite numbers, unique keys)."""
    from ..safe_io import load_json as strict_load

    value = strict_load(path, what)
    if not isinstance(value, dict):
        raise Llama2binError(f"{path}: expected a JSON object, got a {type(value).__name__}")
    return value


# What a malformed (hand-edited, truncated, foreign) result raises deep inside the report code.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def malformed(path: str, e: Exception) -> Llama2binError:
    """One line naming the file and the field that is missing or of the wrong type."""
    if isinstance(e, KeyError):
        return Llama2binError(f"{path}: not a llama2bin result: missing field {e.args[0]!r}")
    return Llama2binError(f"{path}: not a llama2bin result: a field has the wrong type ({type(e).__name__}: {e})")


def dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def _worst_first(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(tensors, key=lambda t: (-(t["rel_err"] or 0.0), -(t["max_abs_err"] or 0.0), t["name"]))


def _functional_section(verify_result: dict[str, Any]) -> dict[str, Any] | None:
    """The functional check of a verify result and its quality verdict, rounded like every other statistic."""
    f = verify_result.get("functional")
    if not f:
        return None
    quality = verify_result.get("quality")
    return {
        **{k: f[k] for k in _FUNCTIONAL_INFO if k in f},
        **{k: round_sig(f[k]) for k in _FUNCTIONAL_STATS if k in f},
        "kld_percentiles": {k: round_sig(v) for k, v in f["kld_percentiles"].items()},
        "kld_hist": f["kld_hist"],
        "kld_hist_edges": [round_sig(e) for e in f["kld_hist_edges"]],
        "fp32_rtol": f["fp32_rtol"],
        "quality": quality and {"limits": {k: round_sig(v) for k, v in quality["limits"].items()},
                                "gate": quality["gate"], "exceeded": quality["exceeded"], "passed": quality["passed"]},
        "passed": f["passed"],
    }


def c_check_section(c: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the tracked report says of the C consumer check: outcome, arithmetic, tolerances (q8:
    also the tie window of its teacher-forced activations). The measured differences and q8 flips
    stay in results/ (they depend on the compiler)."""
    if not c:
        return None
    from ..checks.ccheck import TOLERANCE
    from ..checks.q8_forcing import TIE_WINDOW

    return {"arithmetic": c["arithmetic"], "positions": len(c["tokens"]), "passed": c["passed"], "skipped": c["skipped"],
            "rel_tolerance": TOLERANCE.get(c["arithmetic"]),
            **({"tie_window": TIE_WINDOW} if c["arithmetic"] == "q8" else {})}


def _weights_fingerprint(verify_result: dict[str, Any]) -> str:
    """Equal for two outputs that hold the same weights (v1 and v2 store the same Q8_0 values and
    scales in a different order), so a figure is drawn once per distinct quantization: the verify
    JSON's `weights_sha256`, taken over the bytes of every weight in canonical order during the
    round trip (checks/tensor.py). Its statistics are then equal too: every check computes the
    same bits from the same weights. An output whose header failed (no weights read) is
    fingerprinted by its own sha256."""
    return (verify_result["weights_sha256"] or verify_result["sha256"])[:16]


def output_label(version: int | str) -> str:
    """'v0', 'v1', 'v1f', ... for .bin versions, 'hf' for the Hugging Face directory (the registry's label)."""
    return format_spec(version).label


def source_record(path: str) -> dict[str, Any]:
    """What a fetch's SOURCE.json says of where the checkpoint came from, for the reports: the
    repo/revision/commit or URL, and every checkpoint file's sha256 and size. Not the record's
    own sha256: it holds the checkpoint's path relative to the working directory, so it changes
    with where the pipeline runs while the checkpoint does not. A local path is reduced to its
    last component (no absolute paths in tracked reports)."""
    import os

    record = load_json(path, "SOURCE.json record")
    out: dict[str, Any] = {}
    for key in ("kind", "repo", "revision", "commit", "url"):
        if isinstance(record.get(key), str):
            out[key] = record[key]
    if isinstance(record.get("path"), str):
        out["path"] = os.path.basename(os.path.normpath(record["path"]))
    files = record.get("files")
    if files is not None:
        # Checked here, where the record is read: a wrong type found while rendering would be
        # blamed on the verify JSON being rendered.
        if not isinstance(files, list):
            raise Llama2binError(f"{path}: files must be a list, got {files!r:.60}")
        out["files"] = []
        for i, f in enumerate(files):
            if not isinstance(f, dict):
                raise Llama2binError(f"{path}: files[{i}] must be an object, got {f!r:.60}")
            for key, kind in (("path", str), ("sha256", str), ("size", int)):
                if not isinstance(f.get(key), kind) or isinstance(f.get(key), bool):
                    raise Llama2binError(f"{path}: files[{i}].{key} must be {'an integer' if kind is int else 'a string'}, "
                                         f"got {f.get(key)!r:.60}")
            out["files"].append({k: f[k] for k in ("path", "sha256", "size")})
    return out


def build_report(model: str, verify_result: dict[str, Any], c_check: dict[str, Any] | None = None,
                 plot: str | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tracked report of one model x output, from a `verify --json` result (and a
    `c-check --json` result). `plot` names the model's figure when this output appears in it;
    `source` is `source_record()` of the fetch's SOURCE.json, when there is one."""
    tensors = [
        {"name": t["name"], "shape": t["shape"], "encoding": t["encoding"], "group_size": t["group_size"],
         **{k: round_sig(t[k]) for k in _STAT_KEYS}}
        for t in _worst_first(verify_result["tensors"])
    ]
    parameters = sum(_prod(t["shape"]) for t in verify_result["tensors"])
    quantized = any(t["encoding"] != "f32" for t in verify_result["tensors"])
    size = verify_result["size"]
    return {
        "model": model,
        "version": verify_result["version"],
        "format": str(verify_result.get("format", verify_result["version"])),
        "read_by": _read_by(str(verify_result.get("format", verify_result["version"]))),
        "label": output_label(verify_result["version"]),
        "file": verify_result["file"],
        "size": size,
        "size_mb": round_sig(size / MB),
        # File bits per model weight, headers and rope tables included (llama.cpp's convention of
        # file size over parameter count): what the storage actually costs per weight.
        "parameters": parameters,
        "bits_per_weight": round_sig(8 * size / parameters) if parameters else None,
        "sha256": verify_result["sha256"],
        "quantized": quantized,
        "weights_fingerprint": _weights_fingerprint(verify_result),
        # correct: header, round trip, float32 logits (the C check is added from its own result)
        "verified": verify_result.get("correct", verify_result["passed"]),
        "failures": verify_result["failures"],
        "group_size": verify_result["group_size"],
        "header": verify_result["header"],  # the file's own header (config.json for an hf directory)
        "model_config": verify_result["source"]["config"],
        "source": {**{k: v for k, v in verify_result["source"].items() if k != "config"},
                   **({"fetched": source} if source else {})},
        "accepted_departures": verify_result["source"]["config"].get("accepted_departures", []),
        "llama2bin": __version__,
        "worst_tensor": tensors[0] if tensors else None,
        "functional": _functional_section(verify_result),
        "c_check": c_check_section(c_check),
        "plot": plot if quantized else None,
        "tensors": tensors,
        # only when they say something (the demo reports stay as they are): a source that was already
        # Q8_0 (binsrc), and v0 rope tables at a base run.c ignores
        **({"source_quantized": verify_result["source_quantized"]} if verify_result.get("source_quantized") else {}),
        **({"rope_tables": rope} if (rope := verify_result.get("rope_tables")) and not rope["all_readers_agree"] else {}),
    }


def _read_by(name: str) -> str | None:
    from ..formats import FORMATS

    spec = FORMATS.get(name)
    return spec.read_by if spec else None


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def correct_verdict(r: dict[str, Any]) -> tuple[bool, str]:
    """The hard verdict: header and round trip, the C consumer, and (float32) exact logits.
    Returns (correct, one line saying what was checked or what failed)."""
    problems = list(r["failures"])
    c = r.get("c_check")
    if c and not c["skipped"] and not c["passed"]:
        problems.append("the C consumer disagrees with the Python reference")
    f = r.get("functional")
    if f and not r["quantized"] and not f["passed"] and not problems:
        problems.append("float32 logits differ from the source")
    if problems:
        return False, "; ".join(problems)
    checked = ["round trip"] + (["C consumer"] if c and not c["skipped"] else []) + \
        (["exact logits"] if f and not r["quantized"] else [])
    return True, " + ".join(checked)


def quality_verdict(r: dict[str, Any]) -> str:
    """'exact' (float32), 'within limits', 'above limits' (a warning), 'above limits: gate
    failed' (the user made the limits a gate), or 'not measured'."""
    f = r.get("functional")
    if not r["quantized"]:
        return "exact"
    q = f and f.get("quality")
    if not q:
        return "not measured"
    if not q["exceeded"]:
        return "within limits"
    return "above limits: gate failed" if q["gate"] else "above limits (warning)"


def quality_exceeded(r: dict[str, Any]) -> list[str]:
    f = r.get("functional") or {}
    return list((f.get("quality") or {}).get("exceeded", []))


def distinct_quantizations(reports: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The quantized outputs of one model grouped by identical weights, in output order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        if r["quantized"]:
            groups.setdefault(r["weights_fingerprint"], []).append(r)
    return list(groups.values())


def same_as(group: list[dict[str, Any]]) -> str:
    """'v1 = v2' for a group of outputs holding identical weights."""
    return " = ".join(r["label"] for r in group)
