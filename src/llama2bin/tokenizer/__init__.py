"""Tokenizers as a registry: each kind of tokenizer file is one module, detected by content.

| kind | module | read as | tokenizer.bin convention |
| --- | --- | --- | --- |
| tokenizer.json | hf_json | BpeVocab | the Llama 3 ports' (score = id, raw bytes) |
| tiktoken | tiktoken_file | BpeVocab | the Llama 3 ports' |
| tokenizer.bin | bin_file | TokenizerBin | copied as it is (checked) |
| sentencepiece | sentencepiece_model | SentencePieceVocab | llama2.c's (scores, `▁` as space) |

Detection looks at the content, in this order (each test is exclusive of the earlier ones): a
JSON object; a first line "base64 rank"; a tokenizer.bin whose max_token_length and first entry
are plausible; else sentencepiece, which says "not a sentencepiece model ..." if it cannot parse
the file. A file name never decides: Llama 2's and Llama 3's files are both `tokenizer.model`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

from ..atomic import write_atomic
from ..errors import Llama2binError
from ..safe_io import open_regular, read_fd_capped
from . import bin_file, hf_json, sentencepiece_model, tiktoken_file
from .bin_file import TokenizerBin, read_tokenizer_bin
from .bpe import BpeVocab, SpecialToken, byte_level_text, tiktoken_encoding
from .sentencepiece_model import SentencePieceVocab

Vocab = BpeVocab | SentencePieceVocab | TokenizerBin
_HEAD_BYTES = 4096


@dataclass(frozen=True)
class TokenizerKind:
    name: str
    description: str
    module: Any  # sniff(head) -> bool, read(path) -> Vocab

    def sniff(self, head: bytes) -> bool:
        return bool(self.module.sniff(head))

    def read(self, path: str) -> Vocab:
        return self.module.read(path)


TOKENIZER_KINDS: dict[str, TokenizerKind] = {
    m.KIND: TokenizerKind(m.KIND, m.DESCRIPTION, m)
    for m in (hf_json, tiktoken_file, bin_file, sentencepiece_model)
}


def detect(path: str) -> TokenizerKind:
    """The kind of tokenizer file `path` is, from its first bytes (a regular file only)."""
    fd = open_regular(path, "tokenizer")
    try:
        head = os.pread(fd, _HEAD_BYTES, 0)
    finally:
        os.close(fd)
    return next(kind for kind in TOKENIZER_KINDS.values() if kind.sniff(head))


def read_tokenizer(path: str) -> Vocab:
    """The tokenizer in `path`, whatever its kind, as its typed vocabulary."""
    return detect(path).read(path)


def tokenizer_entries(path: str, vocab_size: int | None = None) -> TokenizerBin:
    """What tokenizer.bin holds for the tokenizer in `path`, in the convention of its kind; refuse
    it if `vocab_size` is given and differs. A tokenizer.bin needs `vocab_size` (it has no count)."""
    kind = detect(path)
    if kind.name == bin_file.KIND:
        if vocab_size is None:
            raise Llama2binError(f"{path}: a tokenizer.bin does not record its size; give the model "
                                 "(--checkpoint/--bin/...) or --vocab-size to check it against")
        return read_tokenizer_bin(path, vocab_size)  # refuses a tokenizer of another size
    vocab = kind.read(path)
    assert not isinstance(vocab, TokenizerBin)
    if vocab_size is not None and vocab_size != vocab.vocab_size:
        what = "pieces" if kind.name == sentencepiece_model.KIND else "tokens"
        raise Llama2binError(f"tokenizer {path} has {vocab.vocab_size} {what}, the model's vocab_size is {vocab_size}")
    if isinstance(vocab, SentencePieceVocab):
        return bin_file.sentencepiece_bin(vocab)
    return bin_file.bpe_bin(vocab)


def write_tokenizer_bin(model_path: str, out_path: str, vocab_size: int | None = None) -> TokenizerBin:
    """Convert the tokenizer in `model_path` to `out_path` (tokenizer.bin), atomically."""
    content = tokenizer_entries(model_path, vocab_size)
    write_atomic(out_path, content.to_bytes())
    return content


def verify_tokenizer_bin(bin_path: str, model_path: str) -> list[str]:
    """Read `bin_path` back and compare it entry by entry with a fresh conversion; failures, or []."""
    want = tokenizer_entries(model_path)
    got = read_tokenizer_bin(bin_path, want.vocab_size)
    failures = []
    if got.max_token_length != want.max_token_length:
        failures.append(f"{bin_path}: max_token_length is {got.max_token_length}, expected {want.max_token_length}")
    for i, (gs, ws, gp, wp) in enumerate(zip(got.scores, want.scores, got.pieces, want.pieces, strict=True)):
        if gp != wp:
            failures.append(f"{bin_path}: token {i} is {gp!r}, expected {wp!r}")
        elif struct.pack("<f", gs) != struct.pack("<f", ws):
            failures.append(f"{bin_path}: token {i} has score {gs}, expected {ws}")
    return failures


class TextEncoder:
    """Text -> token ids with the tokenizer's own library: sentencepiece, tokenizers (tokenizer.json)
    or tiktoken (Llama 3's pre-split regex); `bos_id` starts every evaluation sequence."""

    def __init__(self, path: str):
        self.path = path
        self.kind = detect(path).name
        fd = open_regular(path, "tokenizer")
        try:
            raw = read_fd_capped(fd, path, 64 << 20, "tokenizer")
        finally:
            os.close(fd)
        self.sha256 = hashlib.sha256(raw).hexdigest()
        if self.kind == sentencepiece_model.KIND:
            sp = sentencepiece_model.load(path)
            self._encode = sp.EncodeAsIds
            self.bos_id: int | None = sp.bos_id() if sp.bos_id() >= 0 else None
        elif self.kind == tiktoken_file.KIND:
            vocab = tiktoken_file.read(path)
            try:
                enc = tiktoken_encoding(vocab, "llama3")
            except RuntimeError as e:
                raise Llama2binError(str(e)) from None
            self._encode = enc.encode_ordinary
            self.bos_id = vocab.bos_id
        elif self.kind == hf_json.KIND:
            vocab = hf_json.read(path)  # checked as tokenizer.bin conversion checks it, before the library sees it
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise Llama2binError("the tokenizers package is needed to encode with a tokenizer.json "
                                     "(pip install tokenizers)") from None
            tok = Tokenizer.from_str(raw.decode("utf-8"))
            self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids
            self.bos_id = vocab.bos_id
        else:
            raise Llama2binError(f"{path}: a tokenizer.bin cannot encode text; give the tokenizer it was made from")

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))


__all__ = ["TOKENIZER_KINDS", "BpeVocab", "SentencePieceVocab", "SpecialToken", "TextEncoder", "TokenizerBin",
           "TokenizerKind", "byte_level_text", "detect", "read_tokenizer", "read_tokenizer_bin", "tokenizer_entries",
           "verify_tokenizer_bin", "write_tokenizer_bin"]
