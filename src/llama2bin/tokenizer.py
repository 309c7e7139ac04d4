"""tokenizer.bin: a sentencepiece `tokenizer.model` in the form llama2.c's `run.c`/`runq.c` read.

Layout (docs/formats.md, and llama2.c's current `tokenizer.py`): uint32 max_token_length, then for
every token id in order: float32 score, uint32 byte length, the bytes. A piece is written with
sentencepiece's word-boundary mark `▁` replaced by a space, UTF-8 encoded; BOS becomes
"\\n<s>\\n" and EOS "\\n</s>\\n"; byte-fallback pieces `<0xNN>` stay six characters because
`run.c` decodes that spelling itself (an older llama2.c wrote chr(NN) instead, which UTF-8
turns into two bytes for NN >= 0x80 - not what the model means). max_token_length is taken
over the bytes actually written, so the BOS/EOS spellings count.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .atomic import write_atomic
from .errors import Llama2binError
from .safe_io import read_capped

# Llama 2's tokenizer.model is 500 KB; sentencepiece models with 256k pieces are ~4 MB. 64 MiB
# bounds what a hostile file (or a symlink to a huge one) makes us read and hand to protobuf.
MAX_TOKENIZER_MODEL_BYTES = 64 << 20
# A tokenizer.bin is at most ~(8 + max piece length) bytes per token: 64 MiB is far above any.
MAX_TOKENIZER_BIN_BYTES = 64 << 20

WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"
BOS_TEXT = "\n<s>\n"
EOS_TEXT = "\n</s>\n"


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


def _load_sentencepiece(model_path: str):
    try:
        import sentencepiece
    except ImportError:
        raise Llama2binError(
            "the sentencepiece package is needed to read tokenizer.model (pip install sentencepiece)"
        ) from None
    proto = read_capped(model_path, MAX_TOKENIZER_MODEL_BYTES, "sentencepiece tokenizer.model")
    if not proto:
        raise Llama2binError(f"{model_path}: not a sentencepiece model (empty file)")
    try:
        # Parsing from bytes we read ourselves keeps "cannot open" and "not a model" apart.
        sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError, ValueError, TypeError):
        raise Llama2binError(f"{model_path}: not a sentencepiece model") from None
    if sp.get_piece_size() <= 0:
        raise Llama2binError(f"{model_path}: not a sentencepiece model (no pieces)")
    return sp


def _piece_text(sp, i: int, model_path: str) -> str:  # type: ignore[no-untyped-def]
    """Piece `i` as text. sentencepiece does not check that a model's pieces are UTF-8; run.c
    prints them as UTF-8, so a piece that is not is refused rather than written as garbage."""
    try:
        return sp.id_to_piece(i)
    except UnicodeDecodeError:
        raise Llama2binError(f"{model_path}: piece {i} is not valid UTF-8 (a corrupt or hand-edited model)") from None


def tokenizer_entries(model_path: str, vocab_size: int | None = None) -> TokenizerBin:
    """What tokenizer.bin holds for `model_path`; refuse it if `vocab_size` is given and differs."""
    sp = _load_sentencepiece(model_path)
    n_pieces = sp.get_piece_size()
    if vocab_size is not None and vocab_size != n_pieces:
        raise Llama2binError(f"tokenizer {model_path} has {n_pieces} pieces, the model's vocab_size is {vocab_size}")
    bos_id, eos_id = sp.bos_id(), sp.eos_id()  # -1 when the model has none
    pieces: list[bytes] = []
    scores: list[float] = []
    for i in range(n_pieces):
        if i == bos_id:
            text = BOS_TEXT
        elif i == eos_id:
            text = EOS_TEXT
        else:
            text = _piece_text(sp, i, model_path)
        pieces.append(text.replace(WORD_BOUNDARY, " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    # Round scores to float32 here so that the in-memory value is exactly what the file holds.
    scores = list(struct.unpack(f"<{len(scores)}f", struct.pack(f"<{len(scores)}f", *scores)))
    return TokenizerBin(max(len(p) for p in pieces), scores, pieces)


def write_tokenizer_bin(model_path: str, out_path: str, vocab_size: int | None = None) -> TokenizerBin:
    """Convert `model_path` (sentencepiece) to `out_path` (tokenizer.bin), atomically."""
    content = tokenizer_entries(model_path, vocab_size)
    write_atomic(out_path, content.to_bytes())
    return content


def read_tokenizer_bin(path: str, vocab_size: int) -> TokenizerBin:
    """Parse a tokenizer.bin of `vocab_size` entries (the file does not record its own count)."""
    data = read_capped(path, MAX_TOKENIZER_BIN_BYTES, "tokenizer.bin")
    if len(data) < 4:
        raise Llama2binError(f"{path}: too short for a tokenizer.bin ({len(data)} bytes)")
    (max_len,) = struct.unpack_from("<I", data, 0)
    pos = 4
    scores: list[float] = []
    pieces: list[bytes] = []
    for i in range(vocab_size):
        if pos + 8 > len(data):
            raise Llama2binError(f"{path}: ends inside entry {i} of {vocab_size}")
        score, length = struct.unpack_from("<fI", data, pos)
        pos += 8
        if length > max_len or pos + length > len(data):
            raise Llama2binError(f"{path}: entry {i} has length {length} (max_token_length {max_len}, file {len(data)} bytes)")
        scores.append(score)
        pieces.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise Llama2binError(f"{path}: {len(data) - pos} bytes after the {vocab_size} entries")
    return TokenizerBin(max_len, scores, pieces)


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
