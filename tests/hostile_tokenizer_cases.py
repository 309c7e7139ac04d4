"""Hostile inputs for the tiktoken and tokenizer.json readers (issue 19), registered in the corpus
that tests/test_hostile_inputs.py runs through tests/hostile_harness.py. Each starts from a valid
tiny vocabulary (tests/bpe_vocab.py) and damages one thing; `test_tokenizer_controls_convert`
shows the undamaged files convert."""

from __future__ import annotations

import json
import os

from bpe_vocab import tiktoken_text, tiny_merges, tiny_ranks, tokenizer_json, write_json
from hostile_builders import Base, Built, case, replace_with, tokenizer

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def tiktoken_file(d: str, lines: bytes, name: str = "tokenizer.model") -> str:
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(lines)
    return path


def json_file(d: str, edit=None, name: str = "tokenizer.json") -> str:  # type: ignore[no-untyped-def]
    doc = tokenizer_json(tiny_ranks(), tiny_merges(), SPECIALS)
    if edit:
        edit(doc)
    return write_json(os.path.join(d, name), doc)


def _refused(path: str, d: str, needle: str) -> Built:
    return tokenizer(path, d), [path], needle


# hangs and devices


@case("fifo_tokenizer_json", "hang")
def _fifo_json(b: Base, d: str) -> Built:
    return _refused(replace_with(os.path.join(d, "tokenizer.json"), "fifo"), d, "tokenizer.json: is a FIFO")


@case("dev_zero_tiktoken_model", "memory")
def _zero_tiktoken(b: Base, d: str) -> Built:
    return _refused(replace_with(os.path.join(d, "tokenizer.model"), "dev_zero"), d, "is a character device")


# memory: sizes checked before anything is allocated


@case("tokenizer_json_1_gib_sparse", "memory")
def _huge_json(b: Base, d: str) -> Built:
    path = os.path.join(d, "tokenizer.json")
    with open(path, "wb") as f:
        f.write(b"{")
        f.truncate(1 << 30)
    return _refused(path, d, "tokenizer.json")


@case("tiktoken_token_of_4_kib", "memory")
def _long_token(b: Base, d: str) -> Built:
    ranks = tiny_ranks() + [b"x" * 4096]
    return _refused(tiktoken_file(d, tiktoken_text(ranks)), d, "a token of 4096 bytes")


@case("tokenizer_json_token_of_4_kib", "memory")
def _long_json_token(b: Base, d: str) -> Built:
    return _refused(json_file(d, lambda doc: doc["model"]["vocab"].update({"x" * 4096: 267})), d,
                    "is 4096 bytes (more than 1024")


# type confusion and structure


@case("tiktoken_bad_base64", "traceback")
def _bad_base64(b: Base, d: str) -> Built:
    text = tiktoken_text(tiny_ranks()).replace(b"dGg= 256", b"dGg 256")  # b"th" without its padding
    return _refused(tiktoken_file(d, text), d, "line 257: 'dGg' is not valid base64")


@case("tokenizer_json_nested_100000", "traceback")
def _deep_json(b: Base, d: str) -> Built:
    path = os.path.join(d, "tokenizer.json")
    with open(path, "w") as f:
        f.write('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return _refused(path, d, "nested deeper than 64 levels")


@case("tokenizer_json_vocab_id_string", "traceback")
def _id_string(b: Base, d: str) -> Built:
    return _refused(json_file(d, lambda doc: doc["model"]["vocab"].update({"th": "256"})), d,
                    "model.vocab['th'] must be a token id")


@case("tokenizer_json_added_tokens_object", "traceback")
def _added_object(b: Base, d: str) -> Built:
    return _refused(json_file(d, lambda doc: doc.update(added_tokens={"id": 5})), d, "added_tokens must be a list")


# silently wrong: vocabularies that would convert into something other than what they hold


@case("tiktoken_duplicate_rank", "wrong")
def _dup_rank(b: Base, d: str) -> Built:
    text = tiktoken_text(tiny_ranks()) + b"eHl6 266\n"  # "xyz" at rank 266 again
    return _refused(tiktoken_file(d, text), d, "rank 266 appears twice")


@case("tiktoken_missing_rank", "wrong")
def _missing_rank(b: Base, d: str) -> Built:
    text = b"".join(line for line in tiktoken_text(tiny_ranks()).splitlines(keepends=True) if not line.endswith(b" 260\n"))
    return _refused(tiktoken_file(d, text), d, "rank 260 is missing")


@case("tiktoken_duplicate_token", "wrong")
def _dup_token(b: Base, d: str) -> Built:
    text = tiktoken_text(tiny_ranks()) + b"dGg= 267\n"  # "th" again, at a new rank
    return _refused(tiktoken_file(d, text), d, "appears twice (ranks 256 and 267)")


@case("tiktoken_rank_beyond_any_vocab", "wrong")
def _rank_huge(b: Base, d: str) -> Built:
    return _refused(tiktoken_file(d, tiktoken_text(tiny_ranks()) + b"eHl6 9999999999\n"), d,
                    "rank 9999999999 is beyond any vocabulary")


@case("tokenizer_json_id_beyond_vocab", "wrong")
def _json_id_beyond(b: Base, d: str) -> Built:
    def edit(doc: dict) -> None:
        doc["added_tokens"][1]["id"] = 100_000
    return _refused(json_file(d, edit), d, "token id 268 has no token")


@case("tokenizer_json_added_token_over_vocab", "wrong")
def _json_added_clash(b: Base, d: str) -> Built:
    def edit(doc: dict) -> None:
        doc["added_tokens"][0]["id"] = 256  # would replace "th"
    return _refused(json_file(d, edit), d, "puts '<|begin_of_text|>' at id 256")


@case("tokenizer_json_merges_not_ranks", "wrong")
def _json_not_ranks(b: Base, d: str) -> Built:
    def edit(doc: dict) -> None:
        merges = doc["model"]["merges"]
        merges[0], merges[1] = merges[1], merges[0]  # "he" (257) before "th" (256)
    return _refused(json_file(d, edit), d, "the ids are not BPE ranks")


@case("tokenizer_json_sentencepiece_style", "wrong")
def _json_metaspace(b: Base, d: str) -> Built:
    def edit(doc: dict) -> None:
        doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
        doc["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"}]}
    return _refused(json_file(d, edit), d, "sentencepiece-style (Metaspace)")


def controls(d: str) -> list[str]:
    """The undamaged tiktoken file and tokenizer.json (for the controls test)."""
    return [tiktoken_file(d, tiktoken_text(tiny_ranks())), json_file(d)]


__all__ = ["controls", "json"]
