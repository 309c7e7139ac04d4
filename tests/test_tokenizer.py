"""tokenizer.bin: checked field by field against an independent parse and sentencepiece itself."""

from __future__ import annotations

import io
import os
import random
import struct

import numpy as np
import pytest

from llama2bin.cli import main
from llama2bin.tokenizer import read_tokenizer_bin, verify_tokenizer_bin, write_tokenizer_bin

spm = pytest.importorskip("sentencepiece")

VOCAB = 340  # enough merges for whole-word pieces like "▁straße"
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "über", "café", "naïve", "日本", "straße", "hello",
         "world", "token", "piece", "llama", "größe", "ñandú"]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    """A tiny BPE model with byte fallback, trained offline on ~14 KB of generated text."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB, byte_fallback=True, model_type="bpe",
        character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return str(path)


def parse(path: str) -> tuple[int, list[tuple[float, bytes]]]:
    """run.c's reading loop: max_token_length, then (float score, int len, bytes) until the file ends."""
    data = open(path, "rb").read()
    (max_len,) = struct.unpack_from("<I", data, 0)
    pos, entries = 4, []
    while pos < len(data):
        score, n = struct.unpack_from("<fI", data, pos)
        pos += 8
        entries.append((score, data[pos : pos + n]))
        pos += n
    assert pos == len(data)
    return max_len, entries


def test_every_field_matches_sentencepiece(sp_model, tmp_path):
    out = str(tmp_path / "tokenizer.bin")
    assert main(["tokenizer", sp_model, out, "--vocab-size", str(VOCAB)]) == 0
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    max_len, entries = parse(out)
    assert len(entries) == sp.get_piece_size() == VOCAB

    seen_byte = seen_space = False
    for i, (score, piece) in enumerate(entries):
        assert score == np.float32(sp.get_score(i)), i
        raw = sp.id_to_piece(i)
        if i == sp.bos_id():
            assert piece == b"\n<s>\n"
        elif i == sp.eos_id():
            assert piece == b"\n</s>\n"
        elif sp.is_byte(i):
            # byte-fallback pieces stay the six characters run.c's decoder parses
            assert piece == f"<0x{i - 3:02X}>".encode() == raw.encode()
            seen_byte = True
        else:
            assert piece == raw.replace("\u2581", " ").encode("utf-8")
            assert b"\xe2\x96\x81" not in piece
            seen_space |= raw.startswith("\u2581") and piece.startswith(b" ")
    assert seen_byte and seen_space
    assert sp.bos_id() == 1 and sp.eos_id() == 2 and entries[0][1] == b"<unk>"

    assert max_len == max(len(p) for _, p in entries)
    # The length is taken after the replacements: this model's longest raw piece is longer
    # in UTF-8 ("▁" is three bytes), so a count over raw pieces would be wrong here.
    assert max(len(sp.id_to_piece(i).encode()) for i in range(VOCAB)) > max_len
    assert verify_tokenizer_bin(out, sp_model) == []


def test_read_back_and_corruption_detected(sp_model, tmp_path):
    out = str(tmp_path / "t.bin")
    content = write_tokenizer_bin(sp_model, out)
    back = read_tokenizer_bin(out, VOCAB)
    assert back == content
    data = bytearray(open(out, "rb").read())
    data[4 + 8 + 2] ^= 0x01  # a byte of token 0's piece ("<unk>")
    open(out, "wb").write(bytes(data))
    failures = verify_tokenizer_bin(out, sp_model)
    assert len(failures) == 1 and "token 0" in failures[0]



@pytest.mark.parametrize("content", [b"this is not a sentencepiece model\n", b"", bytes(range(256)) * 4])
def test_not_a_sentencepiece_model(tmp_path, capsys, content):
    bad = tmp_path / "bad.model"
    bad.write_bytes(content)
    out = tmp_path / "out" / "tokenizer.bin"
    assert main(["tokenizer", str(bad), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llama2bin: error: ") and str(bad) in err
    assert "not a sentencepiece model" in err
    assert not out.exists() and (not out.parent.exists() or os.listdir(out.parent) == [])


def test_missing_model_file(tmp_path, capsys):
    out = tmp_path / "tokenizer.bin"
    assert main(["tokenizer", str(tmp_path / "nope.model"), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.model" in err
    assert not out.exists()


def test_vocab_mismatch_names_both_numbers(sp_model, tmp_path, capsys):
    out = tmp_path / "tokenizer.bin"
    assert main(["tokenizer", sp_model, str(out), "--vocab-size", "64"]) == 1
    err = capsys.readouterr().err
    assert err == f"llama2bin: error: tokenizer {sp_model} has {VOCAB} pieces, the model's vocab_size is 64\n"
    assert os.listdir(tmp_path) == []
