"""Tokenizer metadata of a GGUF: `tokenizer.ggml.*` as llama.cpp's own converters write it.

A `GgufVocab` is what llama.cpp needs to tokenize: the model kind (`llama` = sentencepiece,
`gpt2` = byte-level BPE), the tokens, scores and token types, merges (BPE), special token ids,
add_bos/add_eos, and the chat template. Readers produce one; `vocab_kvs` turns it into the keys,
in the order the converter writes them. Readers here:

- `sentencepiece_vocab`: a sentencepiece `tokenizer.model`, as convert_hf_to_gguf.py's
  `_create_vocab_sentencepiece` reads it: every id below the model's vocab_size gets a token
  (`[PAD{id}]`, score -10000, type UNUSED where the tokenizer has fewer pieces); piece text
  as sentencepiece spells it (with "▁"), the piece's score, and the type from IsUnknown,
  IsControl, IsUnused, IsByte (else NORMAL - a user-defined piece stays NORMAL there too).
  From a Hugging Face directory, `added_tokens.json` and tokenizer_config.json's
  `added_tokens_decoder` then override tokens (gguf_vocab_hf.py), and the special ids, add_*
  flags and chat template come from tokenizer.json/tokenizer_config.json/config.json as
  gguf.SpecialVocab reads them; without one, from the sentencepiece model itself (its bos, eos,
  unk and pad ids; add_bos true, add_eos false - what llama.cpp assumes for `llama` anyway).
- `tokenizer_bin_vocab`: a llama2.c tokenizer.bin, as llama.cpp's convert-llama2c-to-ggml does:
  ids 0, 1, 2 become `<unk>` (UNKNOWN), `<s>`, `</s>` (CONTROL); an empty piece is CONTROL;
  a piece starting `<0x` + a hex digit is BYTE (its sscanf("<0x%02hhX>")); spaces become "▁";
  the file's scores. unk/bos/eos ids 0/1/2 (it also writes sep and pad as 0xFFFFFFFF, which
  means "none": we leave them out, which llama.cpp reads the same way).
- no tokenizer: `tokenizer.ggml.model = "none"` (llama.cpp then makes llama.vocab_size dummy
  tokens: the model runs on token ids).
- `bpe_vocab`: a byte-level BPE vocabulary from the tokenizer registry (tokenizer.json or
  Llama 3's tiktoken file, tokenizer/bpe.py) -> `gpt2`, as the converter's `_set_vocab_gpt2`:
  tokens in byte-level BPE's unicode spelling, `[PAD{id}]` (UNUSED) for ids without a token,
  special tokens CONTROL (USER_DEFINED when not special), merges "left right" in the same
  spelling, no scores, and `tokenizer.ggml.pre` "llama-bpe" - the name llama.cpp gives Llama 3's
  pre-split regex (the converter recognises it by hashing a tokenization; we recognise the
  regex itself and refuse another, which llama.cpp would split differently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum

from ..errors import Llama2binError
from ..sources.gguf_file import ValueType
from ..tokenizer.bin_file import read_tokenizer_bin
from ..tokenizer.bpe import LLAMA3_PATTERN, BpeVocab, byte_level_text
from ..tokenizer.sentencepiece_model import load as load_sentencepiece
from .gguf_header import KV


class TokenType(IntEnum):
    """tokenizer.ggml.token_type values (gguf.TokenType, llama_token_type)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass(frozen=True)
class SpecialTokens:
    """Special token ids and flags, in the order gguf.SpecialVocab.add_to_gguf writes them."""

    ids: tuple[tuple[str, int], ...] = ()  # ("bos", 1), ("eos", 2), ... in insertion order
    add: tuple[tuple[str, bool], ...] = ()  # ("bos", True), ... -> tokenizer.ggml.add_{typ}_token
    chat_template: str | None = None
    named_chat_templates: tuple[tuple[str, str], ...] = ()  # (name, template), sorted by name
    normalizer_lowercase: bool | None = None
    normalizer_strip_accents: bool | None = None


@dataclass(frozen=True)
class GgufVocab:
    model: str  # "llama" | "gpt2"
    tokens: tuple[bytes, ...]
    token_types: tuple[int, ...]
    scores: tuple[float, ...] | None = None
    pre: str | None = None  # tokenizer.ggml.pre ("default" for sentencepiece, "llama-bpe", ...)
    merges: tuple[str, ...] = ()
    special: SpecialTokens = field(default_factory=SpecialTokens)
    add_space_prefix: bool | None = None  # from tokenizer_config.json add_prefix_space (written first)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        assert len(self.token_types) == n and (self.scores is None or len(self.scores) == n)


def vocab_kvs(vocab: GgufVocab | None) -> list[KV]:
    """The tokenizer.* keys, in the converter's order: [add_space_prefix], model, pre, tokens,
    scores, token_type, then SpecialVocab's merges, special ids, add_* flags, chat template(s),
    normalizer flags. Empty strings and arrays are left out, as GGUFWriter does."""
    if vocab is None:
        return [KV("tokenizer.ggml.model", ValueType.STRING, "none")]
    t = "tokenizer.ggml."
    kvs = []
    if vocab.add_space_prefix is not None:
        kvs.append(KV(t + "add_space_prefix", ValueType.BOOL, vocab.add_space_prefix))
    kvs.append(KV(t + "model", ValueType.STRING, vocab.model))
    if vocab.pre:
        kvs.append(KV(t + "pre", ValueType.STRING, vocab.pre))
    kvs.append(KV(t + "tokens", ValueType.ARRAY, list(vocab.tokens), ValueType.STRING))
    if vocab.scores is not None:
        kvs.append(KV(t + "scores", ValueType.ARRAY, list(vocab.scores), ValueType.FLOAT32))
    kvs.append(KV(t + "token_type", ValueType.ARRAY, list(vocab.token_types), ValueType.INT32))
    special = vocab.special
    if vocab.merges:
        kvs.append(KV(t + "merges", ValueType.ARRAY, list(vocab.merges), ValueType.STRING))
    id_keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
               "pad": "padding_token_id", "mask": "mask_token_id", "eot": "eot_token_id",
               "eom": "eom_token_id"}
    for typ, token_id in special.ids:
        if typ in id_keys:  # SpecialVocab skips types GGUFWriter has no add_*_token_id for
            kvs.append(KV(t + id_keys[typ], ValueType.UINT32, token_id))
    for typ, flag in special.add:
        if typ in ("bos", "eos", "sep"):
            kvs.append(KV(f"{t}add_{typ}_token", ValueType.BOOL, flag))
    for name, template in special.named_chat_templates:
        kvs.append(KV(f"tokenizer.chat_template.{name}", ValueType.STRING, template))
    if special.named_chat_templates:
        kvs.append(KV("tokenizer.chat_templates", ValueType.ARRAY, [n for n, _ in special.named_chat_templates],
                      ValueType.STRING))
    if special.chat_template:
        kvs.append(KV("tokenizer.chat_template", ValueType.STRING, special.chat_template))
    if special.normalizer_lowercase is not None:
        kvs.append(KV("tokenizer.ggml.normalizer.lowercase", ValueType.BOOL, special.normalizer_lowercase))
    if special.normalizer_strip_accents is not None:
        kvs.append(KV("tokenizer.ggml.normalizer.strip_accents", ValueType.BOOL, special.normalizer_strip_accents))
    return kvs


# ---- sentencepiece ---------------------------------------------------------------------------


def sentencepiece_pieces(model_path: str, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """tokens, scores, types for ids 0..vocab_size-1, as _create_vocab_sentencepiece makes them."""
    sp = load_sentencepiece(model_path)
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    n = sp.get_piece_size()
    if n > vocab_size:
        raise Llama2binError(f"tokenizer {model_path} has {n} pieces, more than the model's vocab_size {vocab_size}")
    for i in range(n):
        try:
            tokens[i] = sp.id_to_piece(i).encode("utf-8")
        except UnicodeDecodeError:
            raise Llama2binError(f"{model_path}: piece {i} is not valid UTF-8") from None
        scores[i] = sp.get_score(i)
        if sp.is_unknown(i):
            types[i] = TokenType.UNKNOWN
        elif sp.is_control(i):
            types[i] = TokenType.CONTROL
        elif sp.is_unused(i):
            types[i] = TokenType.UNUSED
        elif sp.is_byte(i):
            types[i] = TokenType.BYTE
        else:
            types[i] = TokenType.NORMAL
    return tokens, scores, types


def sentencepiece_special(model_path: str, vocab_size: int) -> SpecialTokens:
    """Special tokens from the sentencepiece model alone (no Hugging Face files beside it)."""
    sp = load_sentencepiece(model_path)
    ids = []
    for typ, token_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id())):
        if 0 <= token_id < vocab_size:
            ids.append((typ, token_id))
    return SpecialTokens(ids=tuple(ids), add=(("bos", True), ("eos", False)))


def sentencepiece_vocab(model_path: str, vocab_size: int) -> GgufVocab:
    """The `llama` vocabulary of a sentencepiece model for a model of `vocab_size` tokens (special
    tokens from the model itself; gguf_vocab_hf.hf_sentencepiece_vocab adds a Hugging Face
    directory's added tokens, special tokens and chat template)."""
    tokens, scores, types = sentencepiece_pieces(model_path, vocab_size)
    return GgufVocab("llama", tuple(tokens), tuple(types), tuple(scores), pre="default",
                     special=sentencepiece_special(model_path, vocab_size))


# ---- llama2.c tokenizer.bin ------------------------------------------------------------------

_BYTE_PIECE = re.compile(rb"<0x[0-9A-Fa-f]")


def tokenizer_bin_vocab(path: str, vocab_size: int) -> GgufVocab:
    """The `llama` vocabulary convert-llama2c-to-ggml makes from a llama2.c tokenizer.bin."""
    content = read_tokenizer_bin(path, vocab_size)
    tokens: list[bytes] = []
    types: list[int] = []
    for i, piece in enumerate(content.pieces):
        if i == 0:
            piece, typ = b"<unk>", TokenType.UNKNOWN
        elif i == 1:
            piece, typ = b"<s>", TokenType.CONTROL
        elif i == 2:
            piece, typ = b"</s>", TokenType.CONTROL
        elif not piece:
            typ = TokenType.CONTROL
        elif _BYTE_PIECE.match(piece):
            typ = TokenType.BYTE
        else:
            typ = TokenType.NORMAL
        tokens.append(piece.replace(b" ", "\u2581".encode()))  # llama_escape_whitespaces
        types.append(int(typ))
    special = SpecialTokens(ids=(("unk", 0), ("bos", 1), ("eos", 2)), add=(("bos", True), ("eos", False)))
    return GgufVocab("llama", tuple(tokens), tuple(types), tuple(content.scores), pre="default", special=special)


# ---- byte-level BPE (Llama 3) -----------------------------------------------------------------


def bpe_vocab(vocab: BpeVocab, vocab_size: int, special: SpecialTokens | None = None) -> GgufVocab:
    """The `gpt2` vocabulary of a byte-level BPE tokenizer for a model of `vocab_size` tokens.
    `special`: a Hugging Face directory's special tokens (gguf_vocab_hf.hf_special_tokens, as the
    converter reads them); without one, the vocabulary's BOS and first EOS, add_bos true (what
    Llama 3's template does) and add_eos false."""
    if vocab.pattern != LLAMA3_PATTERN:
        raise Llama2binError(f"a {vocab.kind} tokenizer with a pre-split regex other than Llama 3's: llama.cpp would not "
                             "know how to split text for it (tokenizer.ggml.pre)")
    if vocab.vocab_size > vocab_size:
        raise Llama2binError(f"{vocab.kind} tokenizer has {vocab.vocab_size} tokens, more than the model's "
                             f"vocab_size {vocab_size}")
    by_id = {s.id: s for s in vocab.special}
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i >= vocab.vocab_size:
            tokens.append(f"[PAD{i}]".encode())
            types.append(TokenType.UNUSED)
        elif i in by_id:
            tokens.append(by_id[i].text.encode("utf-8"))
            types.append(TokenType.CONTROL if by_id[i].control else TokenType.USER_DEFINED)
        else:
            tokens.append(byte_level_text(vocab.tokens[i]).encode("utf-8"))
            types.append(TokenType.NORMAL)
    merges = tuple(f"{byte_level_text(a)} {byte_level_text(b)}" for a, b in vocab.merges())
    if special is None:
        bos, eos = vocab.bos_id, (vocab.eos_ids[0] if vocab.eos_ids else None)
        ids = tuple((typ, i) for typ, i in (("bos", bos), ("eos", eos)) if i is not None and 0 <= i < vocab_size)
        special = SpecialTokens(ids=ids, add=(("bos", bos is not None), ("eos", False)))
    return GgufVocab("gpt2", tuple(tokens), tuple(types), None, pre="llama-bpe", merges=merges, special=special)
