"""A sentencepiece `tokenizer.model` (Llama 1/2, llama2.c's own), read as a SentencePieceVocab.

Detected last: a sentencepiece model is a protobuf with no magic, so it is what a file is when it
is none of the other kinds and sentencepiece parses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Llama2binError
from ..safe_io import read_capped

KIND = "sentencepiece"
DESCRIPTION = "sentencepiece model (Llama 1/2 and llama2.c tokenizer.model)"
# Llama 2's tokenizer.model is 500 KB; sentencepiece models with 256k pieces are ~4 MB. 64 MiB
# bounds what a hostile file (or a symlink to a huge one) makes us read and hand to protobuf.
MAX_BYTES = 64 << 20
NOT_A_TOKENIZER = "not a sentencepiece model (nor a tiktoken file, tokenizer.json or llama2.c tokenizer.bin)"


@dataclass(frozen=True)
class SentencePieceVocab:
    """Every piece (as sentencepiece spells it, with its `▁`), its score, and the special ids."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    bos_id: int  # -1 when the model has none
    eos_id: int
    unk_id: int
    byte_ids: frozenset[int]  # byte-fallback pieces <0xNN>
    control_ids: frozenset[int]
    kind: str = KIND

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)


def sniff(head: bytes) -> bool:
    return True  # the fallback: read() says so if sentencepiece cannot parse it


def load(model_path: str):  # type: ignore[no-untyped-def]
    """A SentencePieceProcessor over the file's bytes (read capped, from a regular file)."""
    try:
        import sentencepiece
    except ImportError:
        raise Llama2binError(
            "the sentencepiece package is needed to read tokenizer.model (pip install sentencepiece)"
        ) from None
    proto = read_capped(model_path, MAX_BYTES, "sentencepiece tokenizer.model")
    if not proto:
        raise Llama2binError(f"{model_path}: {NOT_A_TOKENIZER} (empty file)")
    try:
        # Parsing from bytes we read ourselves keeps "cannot open" and "not a model" apart.
        sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError, ValueError, TypeError):
        raise Llama2binError(f"{model_path}: {NOT_A_TOKENIZER}") from None
    if sp.get_piece_size() <= 0:
        raise Llama2binError(f"{model_path}: {NOT_A_TOKENIZER} (no pieces)")
    return sp


def read(model_path: str) -> SentencePieceVocab:
    sp = load(model_path)
    n = sp.get_piece_size()
    pieces = []
    for i in range(n):
        try:
            # sentencepiece does not check that a model's pieces are UTF-8; run.c prints them as
            # UTF-8, so a piece that is not is refused rather than written as garbage.
            pieces.append(sp.id_to_piece(i))
        except UnicodeDecodeError:
            raise Llama2binError(f"{model_path}: piece {i} is not valid UTF-8 (a corrupt or hand-edited model)") from None
    return SentencePieceVocab(
        pieces=tuple(pieces), scores=tuple(sp.get_score(i) for i in range(n)), bos_id=sp.bos_id(), eos_id=sp.eos_id(),
        unk_id=sp.unk_id(), byte_ids=frozenset(i for i in range(n) if sp.is_byte(i)),
        control_ids=frozenset(i for i in range(n) if sp.is_control(i)),
    )
