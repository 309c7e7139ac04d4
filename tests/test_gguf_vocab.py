"""GGUF tokenizer metadata (formats/gguf_vocab*.py).

Special tokens of Hugging Face directories are compared with gguf.SpecialVocab itself (the
converter's reader) on tokenizer.json / tokenizer_config.json / config.json variants; the
sentencepiece path is compared with the converter's golden files in test_gguf_write.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
from gguf import SpecialVocab

from llama2bin.errors import Llama2binError
from llama2bin.formats.gguf_vocab import TokenType, sentencepiece_vocab, tokenizer_bin_vocab, vocab_kvs
from llama2bin.formats.gguf_vocab_hf import hf_sentencepiece_vocab, hf_special_tokens
from llama2bin.sources.gguf_file import ValueType
from llama2bin.tokenizer import write_tokenizer_bin

DATA = os.path.join(os.path.dirname(__file__), "data", "gguf")
SPM = os.path.join(DATA, "tiny_hf_gqa", "tokenizer.model")

LLAMA2_POST = {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]}
LLAMA3_POST = {"type": "Sequence", "processors": [
    {"type": "ByteLevel", "add_prefix_space": True},
    {"type": "TemplateProcessing",
     "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
     "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
              {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]}]}
WRAP_POST = {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<|end|>", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                      {"SpecialToken": {"id": "<|end|>", "type_id": 1}}]}
ADDED = [{"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
         {"id": 2, "content": "</s>", "special": True}, {"id": 5, "content": "<|begin_of_text|>", "special": True},
         {"id": 6, "content": "<|end|>", "special": True}, {"id": 7, "content": "<pad>", "special": True}]

CASES = {
    "llama2": ({"added_tokens": ADDED, "post_processor": LLAMA2_POST},
               {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                "unk_token": {"content": "<unk>", "special": True}, "pad_token": None, "chat_template": "{{ x }}"},
               {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}),
    "llama3": ({"added_tokens": ADDED, "post_processor": LLAMA3_POST, "normalizer": None},
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|end|>", "chat_template": "{% x %}"},
               {"bos_token_id": 5, "eos_token_id": [6, 2]}),
    "wrapping_template": ({"added_tokens": ADDED, "post_processor": WRAP_POST},
                          {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, {"pad_token_id": 7}),
    "config_only": (None, None, {"bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0, "pad_token_id": 999}),
    "lowercase": ({"added_tokens": ADDED, "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Lowercase"}, {"type": "BertNormalizer", "strip_accents": True}]}}, {"bos_token": "<s>"}, {}),
    "roberta": ({"added_tokens": ADDED, "post_processor": {"type": "RobertaProcessing", "cls": ["<s>", 1],
                                                            "sep": ["</s>", 2]}}, {"eos_token": "</s>"}, {}),
    "no_tokenizer_json": (None, {"add_bos_token": False, "bos_token": "<s>", "chat_template": "t"}, {"bos_token_id": 1}),
}


def write_dir(d: str, tokenizer: dict | None, config: dict | None, model_config: dict | None) -> str:
    os.makedirs(d)
    for name, content in (("tokenizer.json", tokenizer), ("tokenizer_config.json", config), ("config.json", model_config)):
        if content is not None:
            with open(os.path.join(d, name), "w") as f:
                json.dump(content, f)
    return d


# Where the converter's gguf-py (vendored in llama-cpp-python 0.3.36) is newer than gguf 0.19.0 on
# PyPI: its SpecialVocab also reads a ByteLevel post-processor (add_bos/add_eos false unless a
# template says otherwise). Our port follows the converter's; the expected flags, from its source:
NEWER_ADD_FLAGS = {"llama3": [("bos", True), ("eos", False), ("sep", False)]}


@pytest.mark.parametrize("case", list(CASES))
def test_special_tokens_equal_gguf_special_vocab(tmp_path, case: str) -> None:
    d = write_dir(str(tmp_path / case), *CASES[case])
    ref = SpecialVocab(d, n_vocab=300)
    ours = hf_special_tokens(d, 300)
    assert list(ours.ids) == list(ref.special_token_ids.items())
    assert list(ours.add) == NEWER_ADD_FLAGS.get(case, list(ref.add_special_token.items()))
    assert ours.chat_template == ref.chat_template
    # gguf 0.19.0 on PyPI predates the normalizer flags the converter's vendored gguf-py writes
    want = (True, True) if case == "lowercase" else (None, None)
    ref_flags = (getattr(ref, "normalizer_lowercase", want[0]), getattr(ref, "normalizer_strip_accents", want[1]))
    assert (ours.normalizer_lowercase, ours.normalizer_strip_accents) == ref_flags == want


def test_chat_template_files(tmp_path) -> None:
    d = write_dir(str(tmp_path / "t"), None, {"bos_token": "<s>"}, {})
    with open(os.path.join(d, "chat_template.jinja"), "w") as f:
        f.write("{{ messages }}")
    assert hf_special_tokens(d, 10).chat_template == SpecialVocab(d, n_vocab=10).chat_template == "{{ messages }}"
    os.makedirs(os.path.join(d, "additional_chat_templates"))
    for name in ("tool_use", "rag"):
        with open(os.path.join(d, "additional_chat_templates", f"{name}.jinja"), "w") as f:
            f.write(f"<{name}>")
    ours = hf_special_tokens(d, 10)
    assert ours.chat_template == "{{ messages }}" and ours.named_chat_templates == (("rag", "<rag>"), ("tool_use", "<tool_use>"))
    kvs = vocab_kvs(dataclasses.replace(sentencepiece_vocab(SPM, 304), special=ours))
    tail = [(kv.key, kv.value) for kv in kvs[-4:]]  # named templates sorted (the converter's order is a set's)
    assert tail == [("tokenizer.chat_template.rag", "<rag>"), ("tokenizer.chat_template.tool_use", "<tool_use>"),
                    ("tokenizer.chat_templates", ["rag", "tool_use"]), ("tokenizer.chat_template", "{{ messages }}")]


@pytest.mark.parametrize(("file", "content", "needle"), [
    ("added_tokens.json", {"<x>": -1}, "token id must be a non-negative integer"),
    ("added_tokens.json", {"<x>": "5"}, "token id must be a non-negative integer"),
    ("added_tokens.json", [1, 2], "expected a JSON object"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"-3": {"content": "x"}}}, "is not a token id"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"3": {"content": 7}}}, "has no string content"),
    ("tokenizer_config.json", {"add_prefix_space": "yes"}, "add_prefix_space must be true or false"),
    ("config.json", {"bos_token_id": -1}, "invalid value for special token type bos"),
])
def test_malformed_hf_tokenizer_files_are_refused(tmp_path, file: str, content: object, needle: str) -> None:
    d = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "tiny_hf_gqa"), d)
    with open(d / file, "w") as f:
        json.dump(content, f)
    with pytest.raises(Llama2binError, match=needle):
        hf_sentencepiece_vocab(str(d / "tokenizer.model"), 304, str(d))


def test_sentencepiece_without_hf_files() -> None:
    """Special ids from the model itself; add_bos true, add_eos false (llama.cpp's SPM defaults)."""
    vocab = sentencepiece_vocab(SPM, 302)
    assert vocab.model == "llama" and vocab.pre == "default" and len(vocab.tokens) == 302
    assert vocab.tokens[:5] == (b"<unk>", b"<s>", b"</s>", b"<ctrl>", b"<tool>")
    assert vocab.token_types[:6] == (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL,
                                     TokenType.NORMAL, TokenType.BYTE)  # user-defined stays NORMAL, as in the converter
    assert vocab.tokens[300:] == (b"[PAD300]", b"[PAD301]") and vocab.scores[300:] == (-10000.0, -10000.0)
    assert vocab.special.ids == (("bos", 1), ("eos", 2), ("unk", 0)) and vocab.special.add == (("bos", True), ("eos", False))
    with pytest.raises(Llama2binError, match="has 300 pieces, more than the model's vocab_size 299"):
        sentencepiece_vocab(SPM, 299)


def test_tokenizer_bin_as_convert_llama2c_to_ggml_reads_it(tmp_path) -> None:
    path = str(tmp_path / "tokenizer.bin")
    content = write_tokenizer_bin(SPM, path)
    vocab = tokenizer_bin_vocab(path, 300)
    assert vocab.tokens[:3] == (b"<unk>", b"<s>", b"</s>")
    assert vocab.token_types[:3] == (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL)
    byte_ids = [i for i, p in enumerate(content.pieces) if p.startswith(b"<0x")]
    assert byte_ids and all(vocab.token_types[i] == TokenType.BYTE for i in byte_ids)
    spaced = [i for i, p in enumerate(content.pieces) if p.startswith(b" ")]
    assert spaced and all(vocab.tokens[i] == content.pieces[i].replace(b" ", "\u2581".encode()) for i in spaced)
    assert vocab.scores == tuple(content.scores)
    assert vocab.special.ids == (("unk", 0), ("bos", 1), ("eos", 2))


def test_no_tokenizer_is_model_none() -> None:
    kvs = vocab_kvs(None)
    assert [(kv.key, kv.type, kv.value) for kv in kvs] == [("tokenizer.ggml.model", ValueType.STRING, "none")]
