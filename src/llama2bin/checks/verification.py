"""One call that verifies an output completely: `verify_output` -> `Verification`.

Two verdicts, never confused:
- **correct** (`Verification.failures`): the header, the round trip of every tensor, float32
  outputs giving the source's logits, the C consumer agreeing with the Python reference. Any
  failure here fails the run.
- **quality** (`Verification.quality`): a quantized output's KL divergence, same top token and
  perplexity ratio against `QualityLimits`. Exceeding a limit is a warning; a failure only when
  the user made the limits a gate (`gate=True`: config `quality.gate`, CLI `--quality-gate`).

The JSON form (`to_json`, `from_json`) is what `llama2bin verify --json` writes (README, "The
verify JSON").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from .. import typed_json
from ..errors import Llama2binError
from ..formats.families import open_output
from ..formats.spec import GGUF_FILE
from ..formats.targets import TargetCheck
from ..sources.base import Source
from .as_run import TargetResult, measure_target
from .ccheck import CCheckResult, Consumer, c_check
from .forward import F32
from .functional import FP32_RTOL, FunctionalResult, QualityLimits, ReferenceModel, functional_check, functional_workers
from .gguf_readback import check_gguf_output
from .llamacpp import llamacpp_check
from .tensor import TensorCheckResult, check_tensors

# Families whose round trip has its own check (GGUF: the independent GGUFReader read-back);
# every other family's is checks/tensor.py's, through the Output's TensorRefs.
_TENSOR_CHECKS = {GGUF_FILE.name: check_gguf_output}

SCHEMA = "llama2bin.verify/2"


@dataclass
class QualityVerdict(typed_json.Checked):
    limits: QualityLimits
    gate: bool
    exceeded: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (self.gate and self.exceeded)

    def message(self) -> str:
        return "; ".join(self.exceeded)

    def to_json(self) -> dict[str, Any]:
        return {"limits": self.limits.to_json(), "gate": self.gate, "exceeded": self.exceeded, "passed": self.passed}

    def json_loaded(self, d: dict[str, Any], where: str, path: str) -> None:
        """The derived `passed` agrees with the gate and the limits exceeded."""
        typed_json.derived(d, "passed", self.passed, where, path)


_TENSOR_KEYS = ("file", "version", "format", "size", "sha256", "group_size", "header", "source", "tensors",
                "source_quantized", "rope_tables", "weights_sha256")


class _VerifyKeys(TypedDict):
    """The keys of the verify JSON that are no field of the results it holds."""

    schema: str
    tensor_failures: list[str]  # TensorCheckResult.failures, beside the combined `failures`


@dataclass
class Verification:
    """The tensor check's fields at the top of the JSON, then one key per further section: a
    new section is one field here (`x: XResult | None = None`, XResult a dataclass with to_json);
    to_json and from_json follow the fields, and files written before it read it as null."""

    tensor: TensorCheckResult
    functional: FunctionalResult | None = None
    c_check: CCheckResult | None = None
    quality: QualityVerdict | None = None  # None: no functional check ran
    llamacpp: CCheckResult | None = None  # llama.cpp as the client (families it loads), or why it was skipped
    # --target: per target program reading this format, the quality as it computes (as_run.py)
    targets: list[TargetResult] | None = None

    @property
    def failures(self) -> list[str]:
        """Every correctness failure: tensor check, float32 logits, C consumer, llama.cpp."""
        return [*self.tensor.failures, *(self.functional.failures if self.functional else []),
                *(self.c_check.failures if self.c_check else []), *(self.llamacpp.failures if self.llamacpp else [])]

    @property
    def correct(self) -> bool:
        return not self.failures

    @property
    def passed(self) -> bool:
        return self.correct and (self.quality is None or self.quality.passed)

    def to_json(self) -> dict[str, Any]:
        t = self.tensor.to_json()
        return {
            "schema": SCHEMA,
            **{k: t[k] for k in _TENSOR_KEYS},
            "tensor_failures": self.tensor.failures,
            **{name: None if (part := getattr(self, name)) is None else part.to_json() for name in _sections()
               if name != "targets"},
            # --target only: files without targets keep the key out
            **({"targets": [t.to_json() for t in self.targets]} if self.targets else {}),
            "failures": self.failures,
            "correct": self.correct,
            "passed": self.passed,
        }

    @classmethod
    def from_json(cls, d: Any, where: str = "verification result") -> Verification:
        """The results of a verify JSON (`to_json`'s form), every field checked against its type
        at load (typed_json): a hand-edited, truncated or foreign file is one error naming
        `where` and the field. Keys that follow from the others (`passed`, `correct`,
        `failures`, `version`) must agree with them."""
        keys = typed_json.check(d, _VerifyKeys, where)
        if keys["schema"] != SCHEMA:
            raise typed_json.field_error(where, "schema", f"must be {SCHEMA!r}, got {keys['schema']!r}")
        tensor = typed_json.load(TensorCheckResult, {**d, "failures": keys["tensor_failures"]}, where)
        hints = typed_json.hints(cls)
        result = cls(tensor, **{name: typed_json.check(d.get(name), hints[name], where, name) for name in _sections()})
        for key, expected in (("version", tensor.version), ("failures", result.failures), ("correct", result.correct),
                              ("passed", result.passed)):
            typed_json.derived(d, key, expected, where)
        return result


def _sections() -> list[str]:
    """Verification's fields after the tensor check: each one key of the JSON."""
    return [f.name for f in fields(Verification) if f.name != "tensor"]


def verify_output(path: str, source: Source, *, reference: ReferenceModel | None = None,
                  consumer: Consumer | None = None, arithmetic: str = F32, fp32_rtol: float = FP32_RTOL,
                  limits: QualityLimits | None = None, gate: bool = False, threads: int | None = None,
                  quiet: bool = True, targets: tuple[TargetCheck, ...] = (), tokenizer: str | None = None,
                  functional_memo: dict[tuple, FunctionalResult] | None = None) -> Verification:
    """Verify the output at `path` (any registered format) against `source`, opened once: the
    tensor check always; the functional check with a `reference` (the source on the model's
    evaluation tokens); the C check with a compiled `consumer`, for formats the C consumer reads
    (on the first evaluation sequence); llama.cpp, for formats it loads, when a `reference` gives
    the tokens (skipped with the reason recorded when the binding is not installed). `targets`: the
    programs the outputs are for; each one that reads this output's format measures it as it
    computes (one of them must). `tokenizer`: the model's tokenizer, for formats that store one
    (GGUF; None: the source's own).

    `functional_memo` (one dict per reference, shared by the outputs of one model) reuses the
    functional result of an earlier output whose weights have the same fingerprint: v1 and v2
    hold the same Q8_0 q and scales in two layouts. The forward reads exactly the bytes the
    fingerprint hashed (the output's TensorRefs, tensor by tensor; encoding and group size are
    in it) with the reference's config and deterministic numerics, so its logits, and every
    statistic made from them, are bit for bit the earlier output's. Only outputs whose tensor
    check passed are memoized or served."""
    with open_output(path) as output:
        mine = [c for c in targets if c.target.format == output.spec.name]
        if targets and not mine:
            raise Llama2binError(f"{path}: none of the targets ({', '.join(c.target.name for c in targets)}) reads "
                                 f"{output.spec.label}")
        family_check = _TENSOR_CHECKS.get(output.spec.family.name)
        if family_check is not None:
            tensor = family_check(output, source, quiet=quiet, threads=threads, tokenizer=tokenizer)
        else:
            tensor = check_tensors(output, source, quiet=quiet, threads=threads)
        result = Verification(tensor)
        if not tensor.tensors:  # nothing compared: a different model altogether, the header says why
            return result
        if reference is not None:
            key = None
            if functional_memo is not None and tensor.passed and tensor.weights_sha256:
                key = (id(reference), tensor.weights_sha256, arithmetic, fp32_rtol)
            if key is not None and key in functional_memo:
                result.functional = copy.deepcopy(functional_memo[key])
            else:
                # an unquantized output whose tensors were just shown to be the source's, bit for bit
                # (the float32 check of checks/tensor.py): its forward is the reference's
                same = family_check is None and tensor.passed and not output.lossy
                result.functional = functional_check(output, reference, arithmetic=arithmetic, fp32_rtol=fp32_rtol,
                                                     quiet=quiet, source_weights=same,
                                                     workers=functional_workers(reference.config, threads))
                if key is not None:
                    functional_memo[key] = copy.deepcopy(result.functional)
            limits = limits or QualityLimits()
            result.quality = QualityVerdict(limits, gate, limits.exceeded(result.functional))
        if consumer is not None and output.spec.family.c_consumer:
            tokens = reference.tokens.sequences[0] if reference is not None else None
            result.c_check = c_check(path, consumer, tokens=tokens)
        if reference is not None and output.spec.family.llamacpp:
            result.llamacpp = llamacpp_check(output, reference.tokens.sequences[0], fp32_rtol)
        workers = functional_workers(reference.config, threads) if reference is not None else 1
        result.targets = [measure_target(output, c, reference, quiet, workers) for c in mine] or None
    return result
