"""A Hugging Face `tokenizer.json` holding a byte-level BPE (Llama 3, GPT-2 style), read as a BpeVocab.

What is read: `model` (type BPE: `vocab` token -> id in byte-level spelling, `merges` as "a b" or
["a", "b"]), `added_tokens` (special tokens: their literal `content` at their `id`), the Split
pre-tokenizer's regex and the BOS of a TemplateProcessing post-processor. Everything is checked:
ids form exactly 0..n-1, each once; an added token at a vocabulary id must be that token; token
spellings are byte-level; no token is empty or longer than MAX_TOKEN_BYTES; every merge joins
two tokens of the vocabulary into a third, and the tokens the merges make never
have decreasing ids (Llama 3's lists every split of a token, so equal ids follow each other) -
i.e. ids are BPE ranks, which the Llama 3 ports' "score = id" tokenizer.bin relies on.

A sentencepiece-style tokenizer.json (Llama 2, Mistral: Metaspace and byte fallback) is refused:
the tokenizer.model next to it is the file to convert.
"""

from __future__ import annotations

from typing import Any

from ..constants import MAX_VOCAB
from ..errors import Llama2binError
from ..safe_io import parse_json, read_capped
from .bpe import LLAMA3_BOS, LLAMA3_EOS, LLAMA3_EOT, MAX_TOKEN_BYTES, BpeVocab, SpecialToken, unicode_to_byte

KIND = "tokenizer.json"
DESCRIPTION = "Hugging Face tokenizer.json with a byte-level BPE model (Llama 3), special tokens from added_tokens"
# Llama 3's is 9 MB; the largest in use are ~35 MB.
MAX_BYTES = 64 << 20
# GPT-2's pre-split regex, which a ByteLevel pre-tokenizer with use_regex applies.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def sniff(head: bytes) -> bool:
    return head.lstrip()[:1] == b"{"


def _obj(value: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Llama2binError(f"{where}: {what} must be an object, got {type(value).__name__}")
    return value


def _int(value: Any, where: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_VOCAB:
        raise Llama2binError(f"{where}: {what} must be a token id in 0..{MAX_VOCAB - 1}, got {value!r:.60}")
    return value


def _token_bytes(text: Any, where: str, what: str) -> bytes:
    if not isinstance(text, str) or not text:
        raise Llama2binError(f"{where}: {what} must be a non-empty string, got {text!r:.60}")
    table = unicode_to_byte()
    try:
        raw = bytes(table[c] for c in text)
    except KeyError as e:
        raise Llama2binError(f"{where}: {what} {text[:40]!r} has {e.args[0]!r}, not a byte-level BPE character") from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise Llama2binError(f"{where}: {what} is {len(raw)} bytes (more than {MAX_TOKEN_BYTES}: not a real vocabulary)")
    return raw


def _components(node: Any, key: str) -> list[dict[str, Any]]:
    """A pre-tokenizer/decoder/post-processor and, for a Sequence, its members."""
    if not isinstance(node, dict):
        return []
    members = node.get(key)
    return [node, *(m for m in members if isinstance(m, dict))] if isinstance(members, list) else [node]


def read(path: str) -> BpeVocab:
    doc = _obj(parse_json(read_capped(path, MAX_BYTES, "tokenizer.json"), path), path, "tokenizer.json")
    model = _obj(doc.get("model"), path, "model")
    pre = _components(doc.get("pre_tokenizer"), "pretokenizers")
    decoders = _components(doc.get("decoder"), "decoders")
    if model.get("type") != "BPE":
        raise Llama2binError(f"{path}: model type {model.get('type')!r:.40}: only byte-level BPE tokenizer.json is read")
    kinds = {c.get("type") for c in pre + decoders}
    if "ByteLevel" not in kinds:
        style = "sentencepiece-style (Metaspace)" if kinds & {"Metaspace", "ByteFallback"} else "not byte-level"
        raise Llama2binError(f"{path}: a {style} BPE tokenizer.json; convert the sentencepiece tokenizer.model instead")
    for flag in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(flag):
            raise Llama2binError(f"{path}: model.{flag} = {model[flag]!r:.40}: not a plain byte-level BPE")

    vocab = _obj(model.get("vocab"), path, "model.vocab")
    if len(vocab) > MAX_VOCAB:
        raise Llama2binError(f"{path}: {len(vocab)} tokens is beyond any vocabulary (limit {MAX_VOCAB})")
    by_id: dict[int, bytes] = {}
    for text, i in vocab.items():
        i = _int(i, path, f"model.vocab[{text[:40]!r}]")
        if i in by_id:
            raise Llama2binError(f"{path}: token id {i} appears twice in model.vocab")
        by_id[i] = _token_bytes(text, path, "model.vocab token")
    base_ids = {t: i for i, t in by_id.items()}
    if len(base_ids) != len(by_id):
        raise Llama2binError(f"{path}: two model.vocab tokens have the same bytes")

    added = doc.get("added_tokens", [])
    if not isinstance(added, list) or len(added) > MAX_VOCAB:
        raise Llama2binError(f"{path}: added_tokens must be a list of at most {MAX_VOCAB} tokens")
    special: list[SpecialToken] = []
    for n, entry in enumerate(added):
        entry = _obj(entry, path, f"added_tokens[{n}]")
        i = _int(entry.get("id"), path, f"added_tokens[{n}].id")
        content = entry.get("content")
        if not isinstance(content, str) or not content or len(content.encode()) > MAX_TOKEN_BYTES:
            raise Llama2binError(f"{path}: added_tokens[{n}].content must be a string of 1..{MAX_TOKEN_BYTES} bytes")
        if i in by_id:  # an added token may restate a vocabulary token (GPT-2's <|endoftext|>), nothing else
            if by_id[i] != bytes(unicode_to_byte().get(c, 256) % 256 for c in content) or \
                    any(c not in unicode_to_byte() for c in content):
                raise Llama2binError(f"{path}: added_tokens[{n}] puts {content[:40]!r} at id {i}, which model.vocab gives "
                                     "to another token")
            continue
        if any(s.id == i for s in special):
            raise Llama2binError(f"{path}: added_tokens has id {i} twice")
        special.append(SpecialToken(i, content, control=entry.get("special", True) is not False))
    tokens_by_id = {**by_id, **{s.id: s.text.encode() for s in special}}
    n = len(tokens_by_id)
    if max(tokens_by_id, default=-1) != n - 1:
        missing = next((i for i in range(n) if i not in tokens_by_id), n)
        raise Llama2binError(f"{path}: token id {missing} has no token (ids go up to {max(tokens_by_id, default=-1)}, "
                             f"{n} tokens): the ids must be 0..{n - 1}")
    singles = sum(1 for t in by_id.values() if len(t) == 1)
    if singles != 256:
        raise Llama2binError(f"{path}: {singles} single-byte tokens, not 256: byte-level BPE needs every byte")

    merges = _merges(model.get("merges"), base_ids, path)
    special.sort(key=lambda s: s.id)
    names = {s.text: s.id for s in special}
    bos = _template_bos(doc.get("post_processor"), names)
    if bos is None:
        bos = names.get(LLAMA3_BOS)
    eos = tuple(names[t] for t in (LLAMA3_EOS, LLAMA3_EOT) if t in names)
    return BpeVocab(KIND, tuple(tokens_by_id[i] for i in range(n)), tuple(special), pattern=_pattern(pre, path),
                    bos_id=bos, eos_ids=eos, file_merges=merges)


def _merges(raw: Any, ids: dict[bytes, int], path: str) -> tuple[tuple[bytes, bytes], ...]:
    if not isinstance(raw, list) or len(raw) > MAX_VOCAB:
        raise Llama2binError(f"{path}: model.merges must be a list of at most {MAX_VOCAB} merges")
    merges = []
    last = -1
    for n, merge in enumerate(raw):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(parts, list) or len(parts) != 2:
            raise Llama2binError(f"{path}: model.merges[{n}] is not a pair of tokens: {merge!r:.60}")
        a, b = (_token_bytes(p, path, f"model.merges[{n}] part") for p in parts)
        for part in (a, b, a + b):
            if part not in ids:
                raise Llama2binError(f"{path}: model.merges[{n}] needs token {part[:40]!r}, which model.vocab lacks")
        made = ids[a + b]
        if made < last:
            raise Llama2binError(f"{path}: model.merges[{n}] makes token id {made} after one that made {last}: "
                                 "the ids are not BPE ranks, so a rank-ordered tokenizer.bin would encode differently")
        last = made
        merges.append((a, b))
    return tuple(merges)


def _pattern(pre: list[dict[str, Any]], path: str) -> str:
    for c in pre:
        if c.get("type") == "Split":
            pattern = c.get("pattern")
            regex = pattern.get("Regex") if isinstance(pattern, dict) else None
            if isinstance(regex, str):
                return regex
    if any(c.get("type") == "ByteLevel" and c.get("use_regex", True) for c in pre):
        return GPT2_PATTERN
    raise Llama2binError(f"{path}: no pre-tokenizer regex (a Split or a ByteLevel with use_regex)")


def _template_bos(post: Any, names: dict[str, int]) -> int | None:
    """The special token a TemplateProcessing post-processor puts first (Llama 3.1+: <|begin_of_text|>)."""
    for c in _components(post, "processors"):
        single = c.get("single") if c.get("type") == "TemplateProcessing" else None
        if isinstance(single, list) and single and isinstance(single[0], dict):
            first = single[0].get("SpecialToken")
            if isinstance(first, dict) and first.get("id") in names:
                return names[first["id"]]
    return None
