"""Byte-level BPE vocabularies (Llama 3's tiktoken file, a Hugging Face tokenizer.json) as one type.

A `BpeVocab` is what every consumer needs, typed: the token bytes of every id, the special tokens
with their ids and names, the BPE merges in rank order, the pre-split regex, BOS/EOS. The
tokenizer.bin writer, the evaluation-text encoder and the GGUF writer (`tokenizer.ggml.*`: tokens
in GPT-2's byte-to-unicode spelling, token types, merges, `tokenizer.ggml.pre = llama-bpe`) all
read it, whichever file it came from.

Ranks: in a tiktoken vocabulary a base token's id is its rank (the lower, the earlier merged), and
llama2bin keeps that invariant for tokenizer.json too (its readers refuse files whose merges do not
make tokens in id order), so "score = id" - the Llama 3 ports' tokenizer.bin convention - is
exactly the BPE priority.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

# Llama 3's pre-split regex (Meta's tokenizer.py `pat_str`, the Split pre-tokenizer of its tokenizer.json).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's 256 special tokens, as meta-llama/llama3's tokenizer.py names them (ids 128000..128255).
# A tiktoken file holds no names; these are the ones the Llama 3 ports' shipped tokenizer.bin has.
# (Llama 3.1+ renamed some reserved ones - <|finetune_right_pad_id|>, <|eom_id|>, <|python_tag|>;
# a tokenizer.json carries its own names, which are then used.)
LLAMA3_SPECIAL_NAMES: tuple[str, ...] = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 251)),
)
LLAMA3_BOS, LLAMA3_EOS, LLAMA3_EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
# Far above any real token (Llama 3's longest is 128 bytes): a longer one is a corrupt or hostile file.
MAX_TOKEN_BYTES = 1024


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE's token spelling)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@functools.cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def byte_level_text(token: bytes) -> str:
    """A token's bytes in byte-level BPE's spelling (tokenizer.json vocab keys, GGUF gpt2 tokens)."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


@dataclass(frozen=True)
class SpecialToken:
    """A token outside the BPE ranks, written as its literal `text`. `control`: a special token
    (BOS, EOS, reserved; GGUF token type CONTROL) rather than a user-defined one."""

    id: int
    text: str
    control: bool = True


@dataclass(frozen=True)
class BpeVocab:
    """A byte-level BPE vocabulary. `tokens[i]` is the bytes of id i: base tokens' raw bytes, and
    for special tokens their literal name (UTF-8). Base ids are ranks."""

    kind: str  # which reader made it: "tiktoken" or "tokenizer.json"
    tokens: tuple[bytes, ...]
    special: tuple[SpecialToken, ...]
    pattern: str = LLAMA3_PATTERN
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()
    # tokenizer.json states its merges; for a tiktoken file they are derived from the ranks.
    file_merges: tuple[tuple[bytes, bytes], ...] | None = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(s.id for s in self.special)

    def mergeable_ranks(self) -> dict[bytes, int]:
        """Base token bytes -> rank (= id): what tiktoken.Encoding takes."""
        special = self.special_ids
        return {t: i for i, t in enumerate(self.tokens) if i not in special}

    def merges(self) -> tuple[tuple[bytes, bytes], ...]:
        """The BPE merges in rank order: the file's, or (tiktoken) derived from the ranks as
        transformers' TikTokenConverter does - every split of a token into two tokens of the
        vocabulary, ordered by the token's rank, then by the ranks of the two parts. For Llama 3
        this gives exactly the merges of Meta's tokenizer.json (tested)."""
        if self.file_merges is not None:
            return self.file_merges
        return _derived_merges(self)


@functools.cache
def _derived_merges(vocab: BpeVocab) -> tuple[tuple[bytes, bytes], ...]:
    ranks = vocab.mergeable_ranks()
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return tuple((left, right) for _, _, _, left, right in merges)


def tiktoken_encoding(vocab: BpeVocab, name: str):  # type: ignore[no-untyped-def]
    """A tiktoken.Encoding of `vocab` (its pre-split regex, ranks and special tokens)."""
    try:
        import tiktoken
    except ImportError:
        raise RuntimeError("the tiktoken package is needed to encode with a tiktoken vocabulary (pip install tiktoken)") \
            from None
    return tiktoken.Encoding(name=name, pat_str=vocab.pattern, mergeable_ranks=vocab.mergeable_ranks(),
                             special_tokens={s.text: s.id for s in vocab.special})
