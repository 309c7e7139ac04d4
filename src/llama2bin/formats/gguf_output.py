"""GGUF outputs in the family registry: what a GGUF records beyond the weights (name, tokenizer),
writing every GGUF target in one pass, and a GGUF read back as an `Output`.

- `gguf_model_info`: general.name and the tokenizer keys. The tokenizer is `--tokenizer FILE` when
  given, else the one that came with the source (tokenizer.model or tokenizer.json of a Meta or
  Hugging Face directory); its kind is detected from its content (tokenizer/): sentencepiece ->
  `llama` (with a Hugging Face directory's added tokens, special ids and chat template when the
  source is one), a llama2.c tokenizer.bin -> `llama` as convert-llama2c-to-ggml makes it, a
  byte-level BPE tokenizer.json or tiktoken file -> `gpt2`/`llama-bpe`. A GGUF source without
  `--tokenizer` keeps its own tokenizer.* keys, copied as they are. No tokenizer: "none".
- `write_gguf`: every GGUF target of one export in one pass (gguf_write.export_gguf). A source
  whose tensors are already Q8_0 (a v1/v2 .bin, a Q8_0 GGUF) is written to gguf-q8_0 only with
  --allow-requantize (quantizing dequantized values is a second rounding); to F32/F16/BF16 it
  is dequantized, which verify records (`source_quantized`).
- `GgufOutput`: a GGUF read back through the GGUF source reader (sources/gguf.py: the same
  bounded parser, canonical names, lazy rows), so the functional check and llama.cpp run on the
  file's own weights. The independent read-back (GGUFReader) is checks/gguf_readback.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..model import ModelConfig
from ..sources.base import Source, TensorRef
from ..sources.gguf import GgufSource
from ..sources.gguf_file import GgmlType, ValueType, type_name
from .gguf_header import KV
from .gguf_plan import GGUF_FILE_TYPES, MATRIX_TYPE
from .gguf_vocab import GgufVocab, bpe_vocab, sentencepiece_vocab, tokenizer_bin_vocab
from .gguf_vocab_hf import hf_sentencepiece_vocab, hf_special_tokens
from .gguf_write import GgufModelInfo, export_gguf
from .layout import PARAM_NAMES
from .output import Output
from .spec import FormatSpec

TOKENIZER_PREFIX = "tokenizer."


def _vocab(path: str, source: Source) -> GgufVocab:
    from .. import tokenizer as tok

    kind, n = tok.detect(path).name, source.config.vocab_size
    hf_dir = source.path if source.kind == "hf" and os.path.isdir(source.path) else None
    if kind == tok.sentencepiece_model.KIND:
        if hf_dir is not None and os.path.dirname(os.path.abspath(path)) == os.path.abspath(hf_dir):
            return hf_sentencepiece_vocab(path, n, hf_dir)
        return sentencepiece_vocab(path, n)
    if kind == tok.bin_file.KIND:
        return tokenizer_bin_vocab(path, n)
    vocab = tok.detect(path).read(path)
    assert isinstance(vocab, tok.BpeVocab)
    return bpe_vocab(vocab, n, hf_special_tokens(hf_dir, n) if hf_dir is not None else None)


def source_tokenizer_kvs(source: Source) -> tuple[KV, ...] | None:
    """A GGUF source's tokenizer.* keys as they are (None for other sources)."""
    if not isinstance(source, GgufSource):
        return None
    return tuple(KV(key, v.type, v.value, v.sub_type) for key, v in source.header.kv.items()
                 if key.startswith(TOKENIZER_PREFIX))


def gguf_model_info(source: Source, name: str | None = None, tokenizer: str | None = None) -> GgufModelInfo:
    """general.name (`name`, else the source's file or directory name without extension) and the
    tokenizer keys (see the module docstring)."""
    if name is None:
        name = os.path.splitext(os.path.basename(os.path.normpath(source.path)))[0]
    if tokenizer is None:
        copied = source_tokenizer_kvs(source)
        if copied:  # a GGUF without tokenizer keys at all gets "none" below
            return GgufModelInfo(name, tokenizer_kvs=copied)
    path = tokenizer or source.tokenizer_path
    return GgufModelInfo(name, _vocab(path, source) if path else None)


def write_gguf(source: Source, targets: Sequence[tuple[FormatSpec, str]], *, name: str | None, tokenizer: str | None,
               allow_requantize: bool, threads: int | None, quiet: bool) -> list[str]:
    """Write every GGUF target in one pass; the lines saying what was written."""
    q = source.quantization
    for spec, _ in targets:
        if q is not None and MATRIX_TYPE[GGUF_FILE_TYPES[spec.name]] == GgmlType.Q8_0 and not allow_requantize:
            raise Llama2binError(
                f"{source.path}: already Q8_0 (format {q.format}, group size {q.group_size}); {spec.name} would "
                "quantize it a second time (pass --allow-requantize to accept the added error)")
    info = gguf_model_info(source, name, tokenizer)
    layouts = export_gguf(source, [(spec.name, path) for spec, path in targets], info, threads=threads, quiet=quiet)
    lines = [f"wrote {path} ({layout.format}, {layout.size} bytes)" for path, layout in layouts.items()]
    if q is not None:
        lines.append(f"note: {source.path} is Q8_0 (group size {q.group_size}): the GGUF weights are its dequantized "
                     "values" + (", quantized again where the GGUF is Q8_0" if allow_requantize else ""))
    return lines


def _json_value(v: Any) -> Any:
    """A metadata value for JSON: text decoded, long arrays summarised."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


class GgufOutput(Output):
    """A GGUF output read back through sources/gguf.py."""

    def __init__(self, path: str):
        from .registry import FORMATS

        # what the file holds is checked against the source, so no rotary base is refused here
        self._source = GgufSource(path, allow_rope_theta=True)
        self.path = self.hashed_path = path
        self.config = self._source.config
        self.size = os.path.getsize(path)
        kv = self._source.header.kv
        file_type = kv.get("general.file_type")
        names = [n for n, ft in GGUF_FILE_TYPES.items() if file_type is not None and file_type.value == ft]
        if not names:
            raise Llama2binError(f"{path}: general.file_type is {None if file_type is None else file_type.value!r}: "
                                 "llama2bin writes F32 (0), F16 (1), Q8_0 (7) and BF16 (32) GGUFs")
        self.spec = FORMATS[names[0]]
        self.group_size = 32 if any(t.group_size for t in self._source.tensors.values()) else None

    @property
    def tensors(self) -> dict[str, TensorRef]:
        return self._source.tensors

    def metadata(self) -> dict[str, Any]:
        """Every key: scalars and strings as values, arrays as "[N TYPE]"."""
        out: dict[str, Any] = {}
        for key, v in self._source.header.kv.items():
            if v.type == ValueType.ARRAY:
                sub = v.sub_type.name if v.sub_type is not None else "?"
                out[key] = f"[{len(v.value)} {sub}]"
            else:
                out[key] = _json_value(v.value)
        return out

    @property
    def model_name(self) -> str | None:
        v = self._source.header.kv.get("general.name")
        return None if v is None or v.type != ValueType.STRING else v.value.decode("utf-8", "replace")

    def header_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.metadata().items() if not (isinstance(v, str) and len(v) > 200)}

    def header_failures(self, want: ModelConfig) -> list[str]:
        have = self.config
        names = (*PARAM_NAMES, "shared_classifier", "rope_scaling")
        failures = [f"metadata {name} is {getattr(have, name)}, the source has {getattr(want, name)}"
                    for name in names if getattr(have, name) != getattr(want, name)]
        for name in ("norm_eps", "rope_theta"):  # stored as FLOAT32
            if np.float32(getattr(have, name)) != np.float32(getattr(want, name)):
                failures.append(f"metadata {name} is {getattr(have, name)}, the source has {getattr(want, name)}")
        return failures

    def describe(self) -> dict[str, Any]:
        header = self._source.header
        tensors = [{"name": t.name, "ne": list(t.ne), "shape": list(t.shape), "dtype": type_name(t.ggml_type),
                    "offset": t.offset, "nbytes": t.nbytes} for t in header.tensors]
        return {"file": self.path, "format": self.spec.name, "format_description": self.spec.description,
                "gguf_version": header.version, "header": self.metadata(), "size": self.size,
                "expected_size": header.file_size, "size_matches": self.size == header.file_size, "tensors": tensors}

    def close(self) -> None:
        self._source.close()
