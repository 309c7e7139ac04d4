"""Small byte-level BPE vocabularies written as the files llama2bin reads: a tiktoken file (Meta's
Llama 3 `tokenizer.model` layout) and a Hugging Face tokenizer.json. Spelled out here with
transformers' GPT-2 byte-to-unicode table, independently of llama2bin's own."""

from __future__ import annotations

import base64
import json

from transformers.convert_slow_tokenizer import bytes_to_unicode

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
# A hand-made rank list: the 256 bytes, then merges each made of two earlier tokens.
MERGED = [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b" a", b"an", b"and", b" and"]


def tiny_ranks() -> list[bytes]:
    return [bytes([b]) for b in range(256)] + MERGED


def tiktoken_text(ranks: list[bytes]) -> bytes:
    return b"".join(base64.b64encode(t) + b" " + str(i).encode() + b"\n" for i, t in enumerate(ranks))


def spell(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def tokenizer_json(ranks: list[bytes], merges: list[tuple[bytes, bytes]], specials: list[str]) -> dict:
    """A tokenizer.json as transformers writes Llama 3's: Split(regex) + ByteLevel, BPE with
    ignore_merges, special tokens as added tokens after the base ids."""
    n = len(ranks)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": n + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, s in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {spell(t): i for i, t in enumerate(ranks)},
                  "merges": [f"{spell(a)} {spell(b)}" for a, b in merges]},
    }


def tiny_merges() -> list[tuple[bytes, bytes]]:
    """The one split of each MERGED token into two earlier tokens (rank order)."""
    known = set(tiny_ranks()[:256])
    merges = []
    for t in MERGED:
        split = next((t[:i], t[i:]) for i in range(1, len(t)) if t[:i] in known and t[i:] in known)
        merges.append(split)
        known.add(t)
    return merges


def write_json(path: str, doc: dict) -> str:
    with open(path, "w") as f:
        json.dump(doc, f)
    return path
