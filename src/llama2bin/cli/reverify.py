"""`llama2bin reverify --plan JSON`: the pipeline's on-demand re-verification as plain data.

The pipeline's `reverify` rule passes one JSON plan (workflow/rules/common.smk, reverify_plan):

    {"models": [{"model": NAME, "source": KIND (a registered source kind), "path": CHECKPOINT,
                 "max_seq_len": N (optional), "allow_rope_theta": bool (optional),
                 "files": [OUT, ...], "json": [RECORD, ...]}, ...],
     "verify_options": ["--eval-seqs", "8", ...]}

Each model becomes the argument list of one `llama2bin verify` run, so a re-verification
checks exactly what `verify` checks, with its defaults and validation. Every value stays one
argument: nothing here is ever parsed by a shell.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Llama2binError
from ..formats.source_registry import SOURCES

MODEL_KEYS = {"model", "source", "path", "max_seq_len", "allow_rope_theta", "files", "json"}


@dataclass(frozen=True)
class ReverifyJob:
    model: str
    verify_argv: list[str]


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise Llama2binError(f"reverify plan: {where} must be a non-empty list of non-empty strings")
    return value


def parse_plan(text: str) -> list[ReverifyJob]:
    """The verify runs of a plan, in order; a malformed plan is one error naming the field."""
    try:
        plan = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise Llama2binError(f"reverify plan: not valid JSON ({e})") from None
    if not isinstance(plan, dict) or set(plan) - {"models", "verify_options"} or not isinstance(plan.get("models"), list):
        raise Llama2binError("reverify plan: expected an object with a 'models' list (and optional 'verify_options')")
    options = plan.get("verify_options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise Llama2binError("reverify plan: verify_options must be a list of strings")
    jobs = []
    for i, entry in enumerate(plan["models"]):
        where = f"models[{i}]"
        if not isinstance(entry, dict) or set(entry) - MODEL_KEYS:
            raise Llama2binError(f"reverify plan: {where} must be an object with keys from {sorted(MODEL_KEYS)}")
        model = entry.get("model")
        if not isinstance(model, str) or not model:
            raise Llama2binError(f"reverify plan: {where}.model must be a non-empty string")
        source = entry.get("source")
        kind = SOURCES.get(source) if isinstance(source, str) else None
        if kind is None:
            raise Llama2binError(f"reverify plan: {where}.source must be one of {', '.join(SOURCES)}")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise Llama2binError(f"reverify plan: {where}.path must be a non-empty string")
        files = _strings(entry.get("files"), f"{where}.files")
        records = _strings(entry.get("json"), f"{where}.json")
        # "--flag=value": a path that starts with "-" is still the flag's value, not an option.
        argv = ["verify", *files, f"{kind.flag}={path}"]
        if "max_seq_len" in entry:
            if type(entry["max_seq_len"]) is not int:
                raise Llama2binError(f"reverify plan: {where}.max_seq_len must be an integer")
            argv += ["--max-seq-len", str(entry["max_seq_len"])]
        if entry.get("allow_rope_theta", False) not in (True, False):
            raise Llama2binError(f"reverify plan: {where}.allow_rope_theta must be true or false")
        if entry.get("allow_rope_theta"):
            argv.append("--allow-rope-theta")
        argv += [*options, "--quiet", "--json", *records]
        jobs.append(ReverifyJob(model, argv))
    return jobs


def run_plan(text: str, run_cli: Callable[[Sequence[str]], int]) -> int:
    """Run every model's verify through `run_cli` (the CLI's main: it prints each run's lines and
    turns its errors into one line and a status), continuing past a failing model."""
    failed = [job.model for job in parse_plan(text) if run_cli(job.verify_argv) != 0]
    if failed:
        raise Llama2binError(f"re-verification failed for {len(failed)} model(s): {', '.join(failed)}")
    return 0
