"""The source registry: every kind of checkpoint llama2bin reads, by the name a config gives it.

Each kind is one `SourceKind`: its `source:` value, the CLI flag that names it and its help,
whether it is one file or a directory, which tensor encodings its tensors may carry (Q8_0: the
writer then copies q and scales instead of quantizing twice), and how it is opened. The CLI's
source arguments and `source_paths`, reverify's plans, the workflow's flags (common.smk) and
the fetch step's file-or-directory rule all read this table; tests/test_registry.py proves
the config schema's `source` enum equal to it. Adding a kind is one module holding its
`Source` subclass plus one entry here.

Why in formats/ and not in sources/: the `bin` kind reads a .bin through the format reader
(formats/bin_source.py), and a GGUF source will read through the GGUF reader the same way;
sources/ may never import formats/ (tests/test_formats.py enforces the flow, late imports
included). formats/ is the earliest stage allowed to reach both, so the registry lives here and
sources/ stays a plain library of readers. Openers import their module only when called, so
importing the registry (the CLI's start-up, the Snakefile) loads none of the readers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import Llama2binError
from ..sources.base import Source, TensorEncoding

_FLOATS = frozenset({TensorEncoding.F32, TensorEncoding.F16, TensorEncoding.BF16, TensorEncoding.F64})


@dataclass(frozen=True)
class SourceKind:
    name: str  # config `source:` value; Source.kind of what `open` returns
    flag: str  # the CLI option naming it
    metavar: str
    help: str
    directory: bool  # a directory (else one file): a fetched repo must then bring the snapshot, not one `file:`
    encodings: frozenset[TensorEncoding]  # how its tensors may be stored
    opener: Callable[..., Source]  # (path, max_seq_len=, allow_rope_theta=) -> Source

    @property
    def dest(self) -> str:
        """The argparse attribute its flag fills (--meta-llama -> meta_llama)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def carries_q8_0(self) -> bool:
        """Whether its tensors may already be Q8_0 (then carried over to outputs of the same group size)."""
        return TensorEncoding.Q8_0 in self.encodings

    def open(self, path: str, *, max_seq_len: int | None = None, allow_rope_theta: bool = False) -> Source:
        """The checkpoint at `path`, validated by its reader (a bad one is one Llama2binError).

        allow_rope_theta accepts a rotary base other than 10000, recorded in
        config.accepted_departures (a kind whose files cannot state one ignores it)."""
        return self.opener(path, max_seq_len=max_seq_len, allow_rope_theta=allow_rope_theta)


def _llama2c(path: str, *, max_seq_len: int | None, allow_rope_theta: bool) -> Source:
    from ..sources.llama2c import Llama2cSource

    return Llama2cSource(path, max_seq_len=max_seq_len)  # its model_args hold no rotary base


def _meta(path: str, **options: Any) -> Source:
    from ..sources.meta import MetaSource

    return MetaSource(path, **options)


def _hf(path: str, **options: Any) -> Source:
    from ..sources.hf import HfSource

    return HfSource(path, **options)


def _bin(path: str, **options: Any) -> Source:
    from .bin_source import BinSource

    return BinSource(path, **options)


SOURCES: dict[str, SourceKind] = {kind.name: kind for kind in (
    SourceKind("llama2c", "--checkpoint", "CKPT.pt", "llama2.c training checkpoint", False, _FLOATS, _llama2c),
    SourceKind("meta", "--meta-llama", "DIR", "Meta Llama 2 directory (params.json, consolidated.NN.pth)", True,
               _FLOATS, _meta),
    SourceKind("hf", "--hf", "DIR", "Hugging Face directory (config.json, *.safetensors or *.bin)", True, _FLOATS, _hf),
    SourceKind("bin", "--bin", "FILE.bin", "an existing llama2.c .bin of any version (e.g. stories15M.bin)", False,
               frozenset({TensorEncoding.F32, TensorEncoding.Q8_0}), _bin),
)}


def source_kind(name: object) -> SourceKind:
    """The registered kind called `name`; anything else is one error naming the known ones."""
    kind = SOURCES.get(name) if isinstance(name, str) else None
    if kind is None:
        raise Llama2binError(f"unknown source kind {name!r} (known: {', '.join(SOURCES)})")
    return kind


def open_source(kind: str, path: str, *, max_seq_len: int | None = None, allow_rope_theta: bool = False) -> Source:
    """Open `path` as a checkpoint of the registered `kind` ("llama2c", "meta", "hf", "bin")."""
    return source_kind(kind).open(path, max_seq_len=max_seq_len, allow_rope_theta=allow_rope_theta)


def single_file(name: object) -> bool | None:
    """Whether a config's `source:` value names a one-file checkpoint; None for an unknown value
    (the schema refuses it with its own message)."""
    kind = SOURCES.get(name) if isinstance(name, str) else None
    return None if kind is None else not kind.directory


def carrying_q8_0() -> Iterator[SourceKind]:
    """The kinds whose tensors may already be Q8_0."""
    return (kind for kind in SOURCES.values() if kind.carries_q8_0)
