"""Quality as a target program runs the file: its hard-coded RoPE and epsilon, or the file's tables.

verify's functional check measures the file with the source's own config: what the bytes lose.
A program adds its own assumptions (formats/targets.py): llama3.c computes RoPE at 500000
without scaling, run.c at 10000, the table-reading ports take the file's freqs_cos/freqs_sin,
the runq programs quantize activations to Q8_0. `measure_target` runs the file's forward that
way and compares it with the source's true forward on the same evaluation tokens (ΔPPL, KLD,
same top), so a report shows beside the quantization's cost what running the file in that
program costs. It is quality, never a correctness failure: the program's assumption is the
user's accepted departure (or none, when the program matches the model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import Llama2binError
from ..formats.output import Output
from ..formats.targets import TargetCheck, TargetSpec
from ..model import ModelConfig
from .forward import F32
from .functional import FunctionalResult, ReferenceModel, functional_check
from .rope_source import RopeSource, table_rope


def program_config(target: TargetSpec, cfg: ModelConfig) -> ModelConfig:
    """The model as `target` computes it: its hard-coded RoPE base (no scaling) and epsilon."""
    if target.rope_theta is not None:
        cfg = dataclasses.replace(cfg, rope_theta=target.rope_theta, rope_scaling=None)
    if target.norm_eps is not None:
        cfg = dataclasses.replace(cfg, norm_eps=target.norm_eps)
    return cfg


def program_rope(target: TargetSpec, output: Output) -> RopeSource | None:
    """RoPE read from the file when the target takes it from the tables; None: computed."""
    if target.rope_theta is not None or output.spec.name != "0":
        return None
    stored = output.rope_tables()
    if stored is None:
        raise Llama2binError(f"{output.path}: {target.name} reads RoPE from the tables, and this v0 file has none")
    return table_rope(*stored)


@dataclass
class TargetResult:
    """One target's view of one output: the model check (TargetCheck.to_json(): the target's
    assumptions, departures, warnings) and the quality as the program computes the file."""

    name: str
    program: str
    format: str
    rope_theta: float | None
    rope_scaling: bool
    norm_eps: float | None
    activations: str
    tokenizer: str
    bos_id: int | None
    eos_ids: list[int]
    ports: list[str]
    departures: list[str]
    warnings: list[str]
    functional: FunctionalResult | None = None  # None without the functional check

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "functional"},
                "functional": self.functional.to_json() if self.functional else None}


def measure_target(output: Output, check: TargetCheck, reference: ReferenceModel | None,
                   quiet: bool = True, workers: int = 1) -> TargetResult:
    """The output's logits as `check.target` computes them, against the source's (`workers`:
    functional_check's processes)."""
    target = check.target
    functional = None
    if reference is not None:
        arithmetic = target.activations if output.group_size is not None else F32
        functional = functional_check(output, reference, arithmetic=arithmetic, quiet=quiet,
                                      file_config=program_config(target, reference.config),
                                      rope=program_rope(target, output), label=f" as {target.name} runs it",
                                      workers=workers)
    return TargetResult(**check.to_json(), functional=functional)
