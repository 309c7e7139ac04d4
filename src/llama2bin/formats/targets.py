"""Targets: the programs that read our files, as data - what each reads and what it hard-codes.

A format says how bytes are laid out; a target says what a *program* does with them. Several
programs read v0 and compute different things from it (run.c RoPE at 10000, the Llama 3 ports
at 500000, the table-reading ports whatever the stored tables say), so a file is only right or
wrong for a program. Each `TargetSpec` declares, from the program's source (/work/shared/READERS.md
lists file:line for each):

- the format it reads;
- its RoPE: a hard-coded base (`rope_theta`) or the file's tables (`rope_theta` None), and
  whether it can express rope scaling (only through the tables);
- its rmsnorm epsilon, BOS and EOS ids, the activations of its matmuls (runq: Q8_0);
- the tokenizer.bin convention it expects;
- how it sizes its KV cache: float32 keys and values for seq_len positions of every layer,
  allocated at start-up (`kv_cache_bytes`).

`check_model(target, cfg, allow)` compares a model with a target: a RoPE the program would
compute differently is refused in one line naming both (`llama3.c computes RoPE at 500000
without scaling; this model uses rope_scaling llama3 (factor 32, ...)`) unless the user
consents (`allow`, --allow-rope-theta), and is then a recorded departure whose cost verify
measures. Hard-coded BOS/EOS and epsilon that differ are warnings (they do not change the file's
arithmetic beyond the measured epsilon; they change what prompts the program builds).

`--version` alone keeps its old meaning: v0 and v2 are for run.c and runq.c (`IMPLIED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..constants import ROPE_THETA
from ..errors import Llama2binError
from ..model import ModelConfig
from .registry import FORMATS

# Tokenizer conventions (tokenizer/: which kinds write which).
LLAMA2C_TOKENIZER = "llama2.c"  # sentencepiece scores, '▁' as a space, <s>/</s> as "\n<s>\n"
LLAMA3_TOKENIZER = "llama3-ports"  # score = id (rank), raw bytes, the 256 special tokens by name
TOKENIZER_CONVENTIONS = {
    "sentencepiece": LLAMA2C_TOKENIZER,
    "tiktoken": LLAMA3_TOKENIZER,
    "tokenizer.json": LLAMA3_TOKENIZER,
}
TOKENIZER_DESCRIPTIONS = {
    LLAMA2C_TOKENIZER: "llama2.c's tokenizer.bin (sentencepiece scores, '▁' as space)",
    LLAMA3_TOKENIZER: "the Llama 3 ports' tokenizer.bin (128256 entries, score = id, raw bytes, special tokens by name)",
}

# Above this, a KV cache allocated at start-up from seq_len gets a warning (Llama 3.2 1B exported
# with its max_position_embeddings 131072: 8.6 GB in run.c).
KV_CACHE_WARN_BYTES = 2 << 30

F32, Q8 = "f32", "q8"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    program: str  # what it is, where it comes from
    format: str  # the registered format it reads
    rope_theta: float | None  # hard-coded RoPE base; None: from the file (v0's tables; GGUF's keys)
    rope_scaling: bool  # can run a rope-scaled model as trained (only through tables or a format key)
    norm_eps: float | None  # hard-coded rmsnorm epsilon; None: from the file
    activations: str  # f32, or q8: activations quantized to Q8_0 before every matmul (runq.c)
    tokenizer: tuple[str, ...]  # tokenizer.bin conventions it can run (first: the one it ships)
    bos_id: int | None = None  # hard-coded BOS it prepends; None: the tokenizer's / the file's
    eos_ids: tuple[int, ...] = ()  # hard-coded stop tokens
    kv_cache: str = "float32 keys and values, seq_len x n_layers x kv_dim each, allocated at start-up"
    kv_from_seq_len: bool = True  # the cache is sized from the header's seq_len (else by the user at run time)
    ports: tuple[str, ...] = ()  # programs that share these assumptions, by name
    ports_without_gqa: tuple[str, ...] = ()  # of those, the ones that read wk/wv as dim x dim (checked in their source)
    sources: str = ""  # where the facts come from (file:line)

    @property
    def available(self) -> bool:
        """Its format is registered in this build (llama.cpp's GGUF formats arrive with issue 18)."""
        return self.format in FORMATS

    @property
    def rope(self) -> str:
        """How it computes RoPE, in words."""
        if self.rope_theta is None:
            return "from the file's tables" if self.format == "0" else "from the file"
        return f"{self.rope_theta:g}, no scaling"

    def kv_cache_bytes(self, cfg: ModelConfig) -> int | None:
        """Bytes of KV cache the program allocates at start-up for `cfg` (None: not from the file)."""
        if not self.kv_from_seq_len:
            return None
        return 2 * 4 * cfg.max_seq_len * cfg.n_layers * cfg.n_kv_heads * cfg.head_size

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "program": self.program, "format": self.format, "rope_theta": self.rope_theta,
                "rope_scaling": self.rope_scaling, "norm_eps": self.norm_eps, "activations": self.activations,
                "tokenizer": self.tokenizer[0], "bos_id": self.bos_id, "eos_ids": list(self.eos_ids),
                "ports": list(self.ports)}


_LLAMA3_PORTS = ("jameswdelancey/llama3.c", "dadeba/llama3.c", "ryao/llama3.c", "euhidaman/llama3.c",
                 "Dylan-Harden3/llama3.2.c")
# v0 readers that take RoPE from the stored freqs_cos/freqs_sin (READERS.md, with file:line).
TABLE_PORTS = ("tairov/llama2.mojo", "trrahul/llama2.cs", "wizzard0/llama2.ts", "tairov/llama2.py",
               "leo-du/llama2.rs", "danielgrittner/llama2-rs", "lintian06/llama2.rs", "gaxler/llama2.rs")
# v0 readers that compute RoPE at 10000 as run.c does (tables ignored).
RUN_C_PORTS = ("mukel/llama2.java", "cgbur/llama2.zig", "flaneur2020/llama2.rs")

_TARGETS = (
    TargetSpec("run.c", "llama2.c run.c (karpathy/llama2.c)", "0", ROPE_THETA, False, 1e-5, F32,
               (LLAMA2C_TOKENIZER,), bos_id=1, eos_ids=(2,), ports=RUN_C_PORTS,
               sources="run.c:137-138 (tables skipped), run.c:267 (powf 10000), run.c:189 (eps)"),
    TargetSpec("runq.c", "llama2.c runq.c (karpathy/llama2.c)", "2", ROPE_THETA, False, 1e-5, Q8,
               (LLAMA2C_TOKENIZER,), bos_id=1, eos_ids=(2,), sources="runq.c (Q8_0 activations, powf 10000)"),
    TargetSpec("llama3.c", "the Llama 3 ports' run.c (jameswdelancey/llama3.c and forks)", "0", 500000.0, False, 1e-5,
               F32, (LLAMA3_TOKENIZER,), bos_id=128000, eos_ids=(128001, 128009), ports=_LLAMA3_PORTS,
               sources="llama3.c run.c:136-137 (tables skipped), run.c:285 (powf 500000), run.c:207 (eps), "
               "run.c:519 (BOS 128000)"),
    TargetSpec("llama3.c-runq", "the Llama 3 ports' runq.c (jameswdelancey/llama3.c and forks)", "2", 500000.0, False,
               1e-5, Q8, (LLAMA3_TOKENIZER,), bos_id=128000, eos_ids=(128001, 128009), ports=_LLAMA3_PORTS,
               sources="llama3.c runq.c:408 (powf 500000)"),
    TargetSpec("tables", "the v0 ports that take RoPE from the file's tables", "0", None, True, 1e-5, F32,
               (LLAMA2C_TOKENIZER, LLAMA3_TOKENIZER), ports=TABLE_PORTS,
               ports_without_gqa=("tairov/llama2.py",),  # llama2.py:60-61 reads wk, wv as n_layers x dim x dim
               sources="llama2.mojo:333-334, Program.cs:573-574, llama2.ts:125-126, llama2.py:68-69, run.rs:117-118, "
               "main.rs:274-281, llama2.rs:193-194, main.rs:454-455"),
    # Issue 18 (the gguf engineer) registers the GGUF formats and fills this in; until then it is
    # listed, refused with a reason, and kept out of nothing (the schema enum holds every target).
    TargetSpec("llama.cpp", "llama.cpp (ggml-org/llama.cpp)", "gguf-q8_0", None, True, None, Q8, ("gguf",),
               kv_cache="f16 keys and values for the context chosen at run time (-c)", kv_from_seq_len=False,
               ports=("mukel/llama3.java",), sources="READERS.md, llama.cpp section"),
)

TARGETS: dict[str, TargetSpec] = {t.name: t for t in _TARGETS}

# What --version alone means (today's behaviour): v0 is for run.c, v2 for runq.c.
IMPLIED = {"0": "run.c", "2": "runq.c"}


def target_spec(name: str) -> TargetSpec:
    try:
        target = TARGETS[name]
    except KeyError:
        raise Llama2binError(f"unknown target {name!r} (known: {', '.join(TARGETS)})") from None
    if not target.available:
        raise Llama2binError(f"target {name}: it reads {target.format}, which this llama2bin does not write yet")
    return target


@dataclass(frozen=True)
class TargetCheck:
    """A model checked against a target: the departures the user accepted (recorded in verify
    JSON and the reports, measured by verify) and warnings (printed once, recorded)."""

    target: TargetSpec
    departures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {**self.target.to_json(), "departures": list(self.departures), "warnings": list(self.warnings)}


def rope_mismatch(target: TargetSpec, cfg: ModelConfig) -> str | None:
    """What the program would compute differently from the model's RoPE, in words; None: nothing."""
    if target.rope_theta is None:  # from the file: the tables (or keys) carry the model's RoPE and scaling
        return None
    uses = []
    if cfg.rope_theta != target.rope_theta:
        uses.append(f"rope_theta {cfg.rope_theta:g}")
    if cfg.rope_scaling is not None:
        uses.append(f"rope_scaling {cfg.rope_scaling.describe()}")
    if not uses:
        return None
    return f"{target.name} computes RoPE at {target.rope_theta:g} without scaling; this model uses {' and '.join(uses)}"


def check_model(target: TargetSpec, cfg: ModelConfig, allow_rope: bool, where: str = "") -> TargetCheck:
    """Refuse a model whose RoPE `target` would compute wrongly, unless `allow_rope`; the
    departures accepted and the warnings about what else it hard-codes."""
    prefix = f"{where}: " if where else ""
    mismatch = rope_mismatch(target, cfg)
    departures: list[str] = []
    if mismatch is not None:
        if not allow_rope:
            raise Llama2binError(f"{prefix}{mismatch}; pass --allow-rope-theta to write it anyway "
                                 "(verify then measures what the program's RoPE costs)")
        departures.append(mismatch)
    warnings = []
    if target.norm_eps is not None and cfg.norm_eps != target.norm_eps:
        departures.append(f"{target.name} normalizes with eps {target.norm_eps:g}; this model uses {cfg.norm_eps:g}")
    if target.bos_id is not None and cfg.bos_id is not None and cfg.bos_id != target.bos_id:
        warnings.append(f"{target.name} starts every prompt with BOS {target.bos_id}; this model's BOS is {cfg.bos_id}")
    if target.eos_ids and cfg.eos_ids and not set(cfg.eos_ids) & set(target.eos_ids):
        warnings.append(f"{target.name} stops at {'/'.join(map(str, target.eos_ids))}; this model's EOS is "
                        f"{'/'.join(map(str, cfg.eos_ids))}")
    if target.ports_without_gqa and cfg.n_kv_heads != cfg.n_heads:
        warnings.append(f"{', '.join(target.ports_without_gqa)} of the {target.name} ports cannot run grouped-query "
                        f"attention ({cfg.n_heads} heads, {cfg.n_kv_heads} kv heads)")
    kv = kv_cache_warning(target, cfg)
    if kv is not None:
        warnings.append(kv)
    return TargetCheck(target, tuple(departures), tuple(warnings))


def kv_cache_warning(target: TargetSpec, cfg: ModelConfig) -> str | None:
    """One line when the program would allocate more than KV_CACHE_WARN_BYTES of KV cache at
    start-up, with the --max-seq-len that brings it under (the largest power of two that does)."""
    size = target.kv_cache_bytes(cfg)
    if size is None or size <= KV_CACHE_WARN_BYTES:
        return None
    per_position = size // cfg.max_seq_len
    fits = 1 << ((KV_CACHE_WARN_BYTES // per_position).bit_length() - 1)
    return (f"{target.name} allocates a {size / 1e9:.1f} GB KV cache at start-up for seq_len {cfg.max_seq_len} "
            f"({cfg.n_layers} layers x kv_dim {cfg.n_kv_heads * cfg.head_size} x 2 x 4 bytes); "
            f"--max-seq-len {fits} brings it to {fits * per_position / 1e9:.1f} GB")


def tokenizer_mismatch(target: TargetSpec, kind: str) -> str | None:
    """Why a tokenizer of `kind` (tokenizer registry name) does not suit `target`; None if it does."""
    convention = TOKENIZER_CONVENTIONS.get(kind)
    if convention is None or convention in target.tokenizer:
        return None
    return (f"{target.name} reads {TOKENIZER_DESCRIPTIONS[target.tokenizer[0]]}; a {kind} tokenizer is written in "
            f"{TOKENIZER_DESCRIPTIONS[convention]}")


def checked_targets(names: list[str], cfg: ModelConfig, allow_rope: bool, where: str) -> tuple[TargetCheck, ...]:
    """The named targets (in order, each once), each checked against `cfg`."""
    return tuple(check_model(target_spec(n), cfg, allow_rope, where) for n in dict.fromkeys(names))


def target_formats(checks: tuple[TargetCheck, ...]) -> list[str]:
    """The formats the targets read, each once, in the order they first name them."""
    return list(dict.fromkeys(c.target.format for c in checks))


def with_target_departures(cfg: ModelConfig, checks: tuple[TargetCheck, ...]) -> ModelConfig:
    """`cfg` recording the departures of these targets (not the opening's generic ones: a model at
    500000 is no departure for llama3.c), for verify JSON and the reports."""
    import dataclasses

    return dataclasses.replace(cfg, accepted_departures=tuple(dict.fromkeys(d for c in checks for d in c.departures)))
