"""tokenizer.bin, the file llama2.c-style programs take with `-z`, and its two conventions.

Layout (docs/formats.md; llama2.c's `tokenizer.py`): uint32 max_token_length, then for every
token id in order: float32 score, uint32 byte length, the bytes. The file does not record its
token count: readers read as many entries as the model's vocab_size.

Two conventions fill it:
- llama2.c's, for sentencepiece (`run.c` merges the highest score first): the score is the
  piece's, `▁` becomes a space (UTF-8), BOS is "\\n<s>\\n" and EOS "\\n</s>\\n", byte-fallback
  pieces `<0xNN>` stay six characters (run.c decodes that spelling itself; an older llama2.c wrote
  chr(NN), which UTF-8 turns into two bytes for NN >= 0x80). Byte-identical to llama2.c's.
- the Llama 3 ports' (jameswdelancey/llama3.c and its forks), for byte-level BPE: score = the
  token id (= its BPE rank) as a float, the token's raw bytes, special tokens as their literal
  names (`<|begin_of_text|>`). Byte-identical to the tokenizer.bin those ports ship.

max_token_length is taken over the bytes actually written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import Llama2binError
from ..safe_io import read_capped
from .bpe import MAX_TOKEN_BYTES, BpeVocab
from .sentencepiece_model import SentencePieceVocab

KIND = "tokenizer.bin"
DESCRIPTION = "llama2.c tokenizer.bin (max_token_length, then score, length, bytes per token)"
# A tokenizer.bin is at most ~(8 + max piece length) bytes per token: 64 MiB is far above any.
MAX_BYTES = 64 << 20

WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"
BOS_TEXT = "\n<s>\n"
EOS_TEXT = "\n</s>\n"
SENTENCEPIECE_CONVENTION = "llama2.c"
BPE_CONVENTION = "llama3.c"


@dataclass(frozen=True)
class TokenizerBin:
    """The content of a tokenizer.bin: what is written, or what was read back."""

    max_token_length: int
    scores: list[float]  # float32 values
    pieces: list[bytes]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def to_bytes(self) -> bytes:
        parts = [struct.pack("<I", self.max_token_length)]
        for score, piece in zip(self.scores, self.pieces, strict=True):
            parts.append(struct.pack("<fI", score, len(piece)))
            parts.append(piece)
        return b"".join(parts)


def _float32(values: list[float]) -> list[float]:
    """Round to float32 here, so that the in-memory value is exactly what the file holds."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def sentencepiece_bin(vocab: SentencePieceVocab) -> TokenizerBin:
    """llama2.c's convention for a sentencepiece vocabulary."""
    pieces = []
    for i, piece in enumerate(vocab.pieces):
        text = BOS_TEXT if i == vocab.bos_id else EOS_TEXT if i == vocab.eos_id else piece
        pieces.append(text.replace(WORD_BOUNDARY, " ").encode("utf-8"))
    return TokenizerBin(max(len(p) for p in pieces), _float32(list(vocab.scores)), pieces)


def bpe_bin(vocab: BpeVocab) -> TokenizerBin:
    """The Llama 3 ports' convention for a byte-level BPE vocabulary: score = id."""
    pieces = list(vocab.tokens)
    return TokenizerBin(max(len(p) for p in pieces), _float32([float(i) for i in range(len(pieces))]), pieces)


def parse(data: bytes, path: str, vocab_size: int | None = None) -> TokenizerBin:
    """Entries until the end of `data` (or exactly `vocab_size` of them, which must end it)."""
    if len(data) < 4:
        raise Llama2binError(f"{path}: too short for a tokenizer.bin ({len(data)} bytes)")
    (max_len,) = struct.unpack_from("<I", data, 0)
    pos = 4
    scores: list[float] = []
    pieces: list[bytes] = []
    while pos < len(data) if vocab_size is None else len(pieces) < vocab_size:
        i = len(pieces)
        if pos + 8 > len(data):
            raise Llama2binError(f"{path}: ends inside entry {i}" + (f" of {vocab_size}" if vocab_size else ""))
        score, length = struct.unpack_from("<fI", data, pos)
        pos += 8
        if length > max_len or pos + length > len(data):
            raise Llama2binError(f"{path}: entry {i} has length {length} (max_token_length {max_len}, file {len(data)} bytes)")
        scores.append(score)
        pieces.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise Llama2binError(f"{path}: {len(data) - pos} bytes after the {vocab_size} entries")
    if not pieces:
        raise Llama2binError(f"{path}: a tokenizer.bin without entries")
    return TokenizerBin(max_len, scores, pieces)


def sniff(head: bytes) -> bool:
    """A plausible max_token_length and first entry (the full structure is checked by `read`)."""
    if len(head) < 12:
        return False
    max_len, _score, length = struct.unpack_from("<IfI", head, 0)
    return 0 < max_len <= MAX_TOKEN_BYTES and length <= max_len


def read(path: str) -> TokenizerBin:
    return parse(read_capped(path, MAX_BYTES, "tokenizer.bin"), path)


def read_tokenizer_bin(path: str, vocab_size: int) -> TokenizerBin:
    """Parse a tokenizer.bin of `vocab_size` entries (the file does not record its own count)."""
    return parse(read_capped(path, MAX_BYTES, "tokenizer.bin"), path, vocab_size)
