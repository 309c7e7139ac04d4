"""Meta's Llama 3 `tokenizer.model`: a tiktoken BPE file, one "base64(token bytes) rank" per line.

Parsed here rather than with tiktoken's `load_tiktoken_bpe` (which also fetches URLs and trusts
its input): every line is checked - strict base64, a decimal rank, ranks 0..n-1 each exactly
once, no token twice, none empty or longer than MAX_TOKEN_BYTES - and the file is size-capped.
The file holds no special tokens: Llama 3's 256 follow the base tokens (ids n..n+255), named as
in meta-llama/llama3 (bpe.LLAMA3_SPECIAL_NAMES), BOS <|begin_of_text|>, EOS <|end_of_text|> and
<|eot_id|>, pre-split with Llama 3's regex.
"""

from __future__ import annotations

import base64
import binascii
import re

from ..constants import MAX_VOCAB
from ..errors import Llama2binError
from ..safe_io import read_capped
from .bpe import LLAMA3_BOS, LLAMA3_EOS, LLAMA3_EOT, LLAMA3_SPECIAL_NAMES, MAX_TOKEN_BYTES, BpeVocab, SpecialToken

KIND = "tiktoken"
DESCRIPTION = "tiktoken BPE file (Meta's Llama 3 tokenizer.model: base64 token, space, rank per line)"
# Llama 3's is 2.2 MB; 64 MiB bounds what a hostile file makes us read.
MAX_BYTES = 64 << 20
_LINE = re.compile(rb"([A-Za-z0-9+/]+={0,2}) (0|[1-9][0-9]{0,9})")


def sniff(head: bytes) -> bool:
    """The first line is a base64 token, a space and a decimal rank."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return _LINE.fullmatch(first) is not None


def read(path: str) -> BpeVocab:
    data = read_capped(path, MAX_BYTES, "tiktoken tokenizer.model")
    by_rank: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise Llama2binError(f"{path}: line {n} is not 'base64-token rank': {line[:60]!r}")
        try:
            token = base64.b64decode(m.group(1), validate=True)
        except (binascii.Error, ValueError):
            raise Llama2binError(f"{path}: line {n}: {m.group(1)[:60].decode()!r} is not valid base64") from None
        rank = int(m.group(2))
        if not token:
            raise Llama2binError(f"{path}: line {n}: an empty token")
        if len(token) > MAX_TOKEN_BYTES:
            raise Llama2binError(f"{path}: line {n}: a token of {len(token)} bytes (more than {MAX_TOKEN_BYTES}: not a "
                                 "real vocabulary)")
        if rank in by_rank:
            raise Llama2binError(f"{path}: line {n}: rank {rank} appears twice")
        if token in seen:
            raise Llama2binError(f"{path}: line {n}: token {token[:40]!r} appears twice (ranks {seen[token]} and {rank})")
        if rank >= MAX_VOCAB:
            raise Llama2binError(f"{path}: line {n}: rank {rank} is beyond any vocabulary (limit {MAX_VOCAB})")
        by_rank[rank] = token
        seen[token] = rank
    n_base = len(by_rank)
    if not n_base:
        raise Llama2binError(f"{path}: an empty tiktoken file")
    if max(by_rank) != n_base - 1:
        missing = next(r for r in range(n_base) if r not in by_rank)
        raise Llama2binError(f"{path}: rank {missing} is missing (ranks go up to {max(by_rank)} with {n_base} tokens)")
    singles = sum(1 for t in by_rank.values() if len(t) == 1)
    if singles != 256:
        raise Llama2binError(f"{path}: {singles} single-byte tokens, not 256: byte-level BPE needs every byte")
    if n_base + len(LLAMA3_SPECIAL_NAMES) > MAX_VOCAB:
        raise Llama2binError(f"{path}: {n_base} tokens is beyond any vocabulary (limit {MAX_VOCAB})")
    special = tuple(SpecialToken(n_base + i, name) for i, name in enumerate(LLAMA3_SPECIAL_NAMES))
    tokens = tuple(by_rank[r] for r in range(n_base)) + tuple(s.text.encode() for s in special)
    ids = {s.text: s.id for s in special}
    return BpeVocab(KIND, tokens, special, bos_id=ids[LLAMA3_BOS], eos_ids=(ids[LLAMA3_EOS], ids[LLAMA3_EOT]))
