"""A Hugging Face directory's tokenizer settings, read as llama.cpp's converter reads them.

Ports of what convert_hf_to_gguf.py does beside the sentencepiece pieces (llama-cpp-python
0.3.36's vendored copy): `_create_vocab_sentencepiece`'s added tokens (added_tokens.json, then
tokenizer_config.json `added_tokens_decoder`), LlamaModel.set_vocab's `add_prefix_space`, and
gguf.SpecialVocab (tokenizer.json `added_tokens` + `post_processor`, tokenizer_config.json
`*_token`, `add_*_token` and `chat_template`, chat_template.jinja/.json, config.json
`*_token_id`). Same results for well-formed files; where the converter would silently do
something surprising with a malformed one, we refuse with one line instead: a negative or
non-integer token id (Python's negative indexing would overwrite the last token), a field of
the wrong JSON type. Every file is read through safe_io (regular files, capped, strict JSON).
Named chat templates (additional_chat_templates/) are listed sorted by name: the converter lists
them in set order, which changes from run to run.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from ..errors import Llama2binError
from ..safe_io import load_json, read_capped
from .gguf_vocab import GgufVocab, SpecialTokens, TokenType, sentencepiece_pieces

TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # SpecialVocab.special_token_types
MAX_TOKENIZER_JSON_BYTES = 64 << 20  # Llama 3's tokenizer.json is 9 MB
MAX_TEMPLATE_BYTES = 1 << 20
_WORD_BOUNDARY = "\u2581"


def _json(hf_dir: str, name: str, max_bytes: int = 16 << 20) -> Any:
    path = os.path.join(hf_dir, name)
    if not os.path.lexists(path):
        return None
    return load_json(path, f"Hugging Face {name}", max_bytes)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Llama2binError(f"{where}: expected a JSON object")
    return value


def _token_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Llama2binError(f"{where}: token id must be a non-negative integer, got {value!r:.40}")
    return value


def looks_special(token: str) -> bool:
    """TextModel.does_token_look_special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def add_hf_added_tokens(hf_dir: str, tokens: list[bytes], scores: list[float], types: list[int]) -> None:
    """Apply added_tokens.json and tokenizer_config.json's added_tokens_decoder in place."""
    n = len(tokens)
    added = _json(hf_dir, "added_tokens.json")
    if added is not None:
        where = os.path.join(hf_dir, "added_tokens.json")
        for key, value in _object(added, where).items():
            token_id = _token_id(value, f"{where}: {key!r:.40}")
            if token_id < n:  # the converter warns and ignores ids beyond the vocabulary
                tokens[token_id], scores[token_id], types[token_id] = key.encode("utf-8"), -1000.0, TokenType.USER_DEFINED
    config = _json(hf_dir, "tokenizer_config.json")
    if config is None:
        return
    where = os.path.join(hf_dir, "tokenizer_config.json")
    decoder = _object(_object(config, where).get("added_tokens_decoder", {}), f"{where}: added_tokens_decoder")
    for key, data in decoder.items():
        if not key.isdigit():
            raise Llama2binError(f"{where}: added_tokens_decoder key {key!r:.40} is not a token id")
        token_id = int(key)
        data = _object(data, f"{where}: added_tokens_decoder[{key}]")
        token = data.get("content")
        if not isinstance(token, str):
            raise Llama2binError(f"{where}: added_tokens_decoder[{key}] has no string content")
        if token_id >= n:
            continue
        if data.get("special") or looks_special(token):
            types[token_id] = TokenType.CONTROL
        else:
            token = token.replace(_WORD_BOUNDARY, " ")  # "pre-normalize user-defined spaces"
            types[token_id] = TokenType.USER_DEFINED
        scores[token_id] = -1000.0
        tokens[token_id] = token.encode("utf-8")


def hf_add_space_prefix(hf_dir: str) -> bool | None:
    config = _json(hf_dir, "tokenizer_config.json")
    value = None if config is None else _object(config, hf_dir).get("add_prefix_space")
    if value is not None and not isinstance(value, bool):
        raise Llama2binError(f"{os.path.join(hf_dir, 'tokenizer_config.json')}: add_prefix_space must be true or false")
    return value


def _special_id(token: Any) -> Any:
    """A TemplateProcessing item's SpecialToken id, or None."""
    return token.get("SpecialToken", {}).get("id") if isinstance(token, dict) else None


class _SpecialVocab:
    """gguf.SpecialVocab(load_merges=False) without its file handling."""

    def __init__(self, hf_dir: str, n_vocab: int):
        self.n_vocab = n_vocab
        self.types: tuple[str, ...] = TYPES
        self.ids: dict[str, int] = {}
        self.add: dict[str, bool] = {}
        self.chat_template: str | None = None
        self.named: list[tuple[str, str]] = []
        self.lowercase: bool | None = None
        self.strip_accents: bool | None = None
        self.dir = hf_dir
        self._from_tokenizer_files()
        config = _json(hf_dir, "config.json")
        if config is not None:
            for typ in self.types:
                self._set(typ, _object(config, hf_dir).get(f"{typ}_token_id"))

    def _set(self, typ: str, token_id: Any) -> None:
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            return
        if token_id < 0:
            raise Llama2binError(f"{self.dir}: invalid value for special token type {typ}: {token_id}")
        if token_id < self.n_vocab and typ not in self.ids:
            self.ids[typ] = token_id

    def _normalizer(self, normalizer: Any) -> None:
        if not isinstance(normalizer, dict):
            return
        kind = normalizer.get("type")
        if kind == "Lowercase":
            self.lowercase = True
        elif kind == "StripAccents":
            self.strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in normalizer:
                self.lowercase = bool(normalizer["lowercase"])
            if "strip_accents" in normalizer:
                self.strip_accents = bool(normalizer["strip_accents"])
        elif kind == "Sequence":
            for child in normalizer.get("normalizers", []) or []:
                self._normalizer(child)

    def _from_tokenizer_files(self) -> None:
        tokenizer = _json(self.dir, "tokenizer.json", MAX_TOKENIZER_JSON_BYTES)
        added_tokens: list[Any] = []
        if tokenizer is not None:
            tokenizer = _object(tokenizer, os.path.join(self.dir, "tokenizer.json"))
            if tokenizer.get("normalizer"):
                self._normalizer(tokenizer["normalizer"])
            added_tokens = tokenizer.get("added_tokens", []) or []
            if not isinstance(added_tokens, list):
                raise Llama2binError(f"{self.dir}/tokenizer.json: added_tokens must be a list")
        tc = _json(self.dir, "tokenizer_config.json")
        if tc is not None:
            tc = dict(_object(tc, os.path.join(self.dir, "tokenizer_config.json")))
        if tokenizer:
            self._post_processor(tokenizer, tc)
        if not tc:
            return
        self._chat_templates(tc)
        for typ in self.types:
            add_entry = tc.get(f"add_{typ}_token")
            if isinstance(add_entry, bool) and typ not in self.add:
                self.add[typ] = add_entry
            entry = tc.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            match = next((t.get("id") for t in added_tokens if isinstance(t, dict) and t.get("content") == content), None)
            self._set(typ, match)

    def _post_processor(self, tokenizer: dict[str, Any], tc: dict[str, Any] | None) -> None:
        """SpecialVocab's reading of the post_processor: which specials wrap a sequence."""
        post = tokenizer.get("post_processor")
        if not isinstance(post, dict):
            return
        get = (tc or {}).get
        bos, cls, eos, sep = get("bos_token"), get("cls_token"), get("eos_token"), get("sep_token")
        if not bos and cls and tc:
            tc["bos_token"] = bos = cls
        if not eos and sep and tc:
            tc["eos_token"] = eos = sep
        processors = post.get("processors", [post])
        for proc in processors if isinstance(processors, list) else []:
            kind = proc.get("type") if isinstance(proc, dict) else None
            if kind == "ByteLevel":
                self.add.setdefault("bos", False)
                self.add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add.update(bos=True, eos=True, sep=True)
                if not cls and tc:
                    tc["cls_token"] = cls = (proc.get("cls") or [bos])[0]
                if not sep and tc:
                    tc["sep_token"] = sep = (proc.get("sep") or [eos])[0]
            elif kind == "TemplateProcessing":
                single, pair = proc.get("single") or [], proc.get("pair") or []
                first = last = None
                if len(single) > 1:
                    if first := _special_id(single[0]):
                        if not tc:
                            bos = first
                        elif first not in (bos, cls):
                            if not bos:
                                tc["bos_token"] = bos = first
                            if not cls:
                                tc["cls_token"] = cls = first
                        self.add["bos"] = first in (bos, cls)
                    if last := _special_id(single[-1]):
                        if not tc:
                            eos = last
                        elif last != eos:
                            extra = "eot" if "eot" not in self.types else "eom" if "eom" not in self.types else None
                            if extra:
                                self.types += (extra,)
                                tc[f"{extra}_token"] = eos
                            tc["eos_token"] = eos = last
                        self.add["eos"] = last == eos
                if pair:
                    start = 1 if first and _special_id(pair[0]) == first else 0
                    stop = -1 if last and _special_id(pair[-1]) == last else None
                    middle = pair[start:stop]
                    a = middle[0].get("Sequence", {}).get("id") if middle and isinstance(middle[0], dict) else None
                    b = middle[-1].get("Sequence", {}).get("id") if middle and isinstance(middle[-1], dict) else None
                    if a == "A" and b == "B" and (middle := middle[1:-1]):
                        add_sep = False
                        if (entry := _special_id(middle[0])) and entry in (sep, eos) and not last:
                            add_sep = True
                        if len(middle) == 2 and (entry := _special_id(middle[1])) and entry in (sep, eos):
                            add_sep = True
                        self.add["sep"] = add_sep
                        if add_sep and not sep and tc:
                            tc["sep_token"] = eos

    def _chat_templates(self, tc: dict[str, Any]) -> None:
        alt: Any = None
        jinja = os.path.join(self.dir, "chat_template.jinja")
        if os.path.lexists(jinja):
            alt = read_capped(jinja, MAX_TEMPLATE_BYTES, "chat template").decode("utf-8", errors="strict")
            extra = sorted(glob.glob(os.path.join(glob.escape(self.dir), "additional_chat_templates", "*.jinja")))
            if extra:
                alt = [{"name": "default", "template": alt}] + [
                    {"name": os.path.basename(p)[: -len(".jinja")],
                     "template": read_capped(p, MAX_TEMPLATE_BYTES, "chat template").decode("utf-8")}
                    for p in extra
                ]
        elif os.path.lexists(os.path.join(self.dir, "chat_template.json")):
            alt = _object(_json(self.dir, "chat_template.json"), self.dir).get("chat_template")
        template = tc.get("chat_template", alt)
        if isinstance(template, str):
            self.chat_template = template
        elif isinstance(template, list):
            for choice in template:
                if not isinstance(choice, dict):
                    continue
                name = "".join(c if c.isascii() and c.isalnum() else "_" for c in str(choice.get("name", "")))
                text = choice.get("template")
                if name and isinstance(text, str):
                    if name == "default":
                        self.chat_template = text
                    else:
                        self.named.append((name, text))
            self.named.sort()


def hf_special_tokens(hf_dir: str, n_vocab: int) -> SpecialTokens:
    """Special token ids, add_* flags, chat template(s) and normalizer flags of `hf_dir`."""
    sv = _SpecialVocab(hf_dir, n_vocab)
    return SpecialTokens(
        ids=tuple(sv.ids.items()),
        add=tuple(sv.add.items()),
        chat_template=sv.chat_template,
        named_chat_templates=tuple(sv.named),
        normalizer_lowercase=sv.lowercase,
        normalizer_strip_accents=sv.strip_accents,
    )


def hf_sentencepiece_vocab(model_path: str, vocab_size: int, hf_dir: str) -> GgufVocab:
    """The `llama` vocabulary convert_hf_to_gguf.py writes for a Hugging Face directory with a
    sentencepiece tokenizer.model: pieces, then added tokens, special tokens, chat template."""
    tokens, scores, types = sentencepiece_pieces(model_path, vocab_size)
    add_hf_added_tokens(hf_dir, tokens, scores, types)
    return GgufVocab("llama", tuple(tokens), tuple(types), tuple(scores), pre="default",
                     special=hf_special_tokens(hf_dir, len(tokens)), add_space_prefix=hf_add_space_prefix(hf_dir))
