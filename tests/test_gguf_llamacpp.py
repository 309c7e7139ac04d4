"""llama.cpp as the real client of our GGUFs (checks/llamacpp.py), and as the reference quantizer.

Skipped with a notice when the llama-cpp-python binding is not installed (the optional extra
`llamacpp`: it compiles llama.cpp, ~9 CPU-minutes); with LLAMA2BIN_REQUIRE_LLAMACPP=1 (for CI, which
installs the extra) that is a failure instead. The reference model is transformers'
LlamaForCausalLM loaded from the same checkpoint directory.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

try:
    import llama_cpp  # noqa: F401
except ImportError:
    if os.environ.get("LLAMA2BIN_REQUIRE_LLAMACPP"):
        raise
    pytest.skip("llama-cpp-python is not installed: the llama.cpp client checks are skipped "
                "(pip install -c constraints.txt -e '.[llamacpp]')", allow_module_level=True)
torch = pytest.importorskip("torch")

from gguf import GGUFReader  # noqa: E402

from llama2bin.checks.ccheck import Consumer, find_compiler  # noqa: E402
from llama2bin.checks.llamacpp import LlamaCppModel, _binding, llamacpp_greedy, llamacpp_logits  # noqa: E402
from llama2bin.formats.gguf_header import KV, build_header  # noqa: E402
from llama2bin.formats.gguf_plan import metadata_kvs, tensor_plan  # noqa: E402
from llama2bin.formats.gguf_vocab_hf import hf_sentencepiece_vocab  # noqa: E402
from llama2bin.formats.gguf_write import GgufModelInfo, export_gguf  # noqa: E402
from llama2bin.formats.writer import export  # noqa: E402
from llama2bin.model import ModelConfig  # noqa: E402
from llama2bin.sources.gguf import GgufSource  # noqa: E402
from llama2bin.sources.gguf_file import FileType, ValueType  # noqa: E402
from llama2bin.sources.hf import HfSource  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "gguf")
CKPT = os.path.join(DATA, "tiny_hf_gqa")
PROMPT = [1, 17, 5, 42, 9, 33, 2, 60, 11, 8, 50, 3, 27, 63, 120, 299]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("gguf")
    paths = {t: str(out / f"tiny.{t}.gguf") for t in ("f32", "f16", "bf16", "q8_0")}
    with HfSource(CKPT) as src:
        vocab = hf_sentencepiece_vocab(os.path.join(CKPT, "tokenizer.model"), src.config.vocab_size, CKPT)
        export_gguf(src, [(f"gguf-{t}", p) for t, p in paths.items()], GgufModelInfo("tiny", vocab), quiet=True)
    return paths


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(CKPT, dtype=torch.float32).eval()


def transformers_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.slow  # transformers' model (~5-10 s to import)
def test_f32_logits_equal_transformers(ggufs, reference) -> None:
    with torch.no_grad():
        want = reference(torch.tensor([PROMPT])).logits[0].numpy()
    got = llamacpp_logits(ggufs["f32"], [PROMPT])[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.mark.slow  # transformers' model (~5-10 s to import)
@pytest.mark.parametrize("t", ["f32", "f16"])
def test_greedy_tokens_equal_transformers(ggufs, reference, t: str) -> None:
    assert llamacpp_greedy(ggufs[t], PROMPT[:4], 24) == transformers_greedy(reference, PROMPT[:4], 24)


@pytest.mark.slow  # transformers' model (~5-10 s to import)
@pytest.mark.parametrize("t", ["bf16", "q8_0"])
def test_lossy_types_load_and_stay_close(ggufs, reference, t: str) -> None:
    """They run; the loss is measured, not gated (bf16 ~1e-2, Q8_0 ~5e-2 on this random model)."""
    with torch.no_grad():
        want = reference(torch.tensor([PROMPT])).logits[0].numpy()
    got = llamacpp_logits(ggufs[t], [PROMPT])[0]
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.25 * max(1.0, float(np.abs(want).max()))


def test_the_tokenizer_llama_cpp_reads(ggufs) -> None:
    """llama.cpp tokenizes with the vocabulary we wrote: the same ids as sentencepiece."""
    import sentencepiece as spm

    lib = _binding()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(CKPT, "tokenizer.model"))
    text = "hello world größe llama"
    with LlamaCppModel(ggufs["f16"], 32) as m:
        vocab = lib.llama_model_get_vocab(m.model)
        buf = (ctypes.c_int32 * 64)()
        n = lib.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 64, True, False)
        assert list(buf[:n]) == [1, *sp.encode(text)]  # add_bos true


def _llama_cpp_quantize(src: str, dst: str, ftype: int) -> None:
    lib = _binding()
    params = lib.llama_model_quantize_default_params()
    params.ftype, params.nthread = ftype, 1
    assert lib.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) == 0


def _tensor_bytes(path: str) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, t.data.tobytes()) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize(("t", "ftype"), [("q8_0", 7), ("f16", 1), ("bf16", 32)])
def test_llama_cpp_own_quantizer_gives_our_bytes(ggufs, tmp_path, t: str, ftype: int) -> None:
    """llama-quantize (ggml-quants.c quantize_row_q8_0_ref, ggml's fp16/bf16 conversions) of our
    F32 GGUF equals our own Q8_0/F16/BF16 file, tensor for tensor."""
    out = str(tmp_path / "lq.gguf")
    _llama_cpp_quantize(ggufs["f32"], out, ftype)
    assert _tensor_bytes(out) == _tensor_bytes(ggufs[t])


def test_llama_cpp_quantizer_on_hostile_blocks(tmp_path) -> None:
    """Zero, subnormal, tiny, tied and outlier Q8_0 blocks through ggml's C quantizer and ours."""
    cfg = ModelConfig(dim=64, hidden_dim=64, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=16, max_seq_len=8,
                      shared_classifier=True)
    rng = np.random.default_rng(3)
    rows = [np.zeros(64), rng.standard_normal(64) * 1e-39, rng.standard_normal(64) * 1e-36, rng.standard_normal(64) * 1e-30,
            np.concatenate([[127.0], np.arange(-31, 32) / 2.0][:64]), np.concatenate([[-127.0], np.arange(0, 63) / 2.0]),
            np.where(np.arange(64) == 5, 40.0, 0.01), rng.standard_normal(64) * 300, np.full(64, 1.4e-45),
            *(rng.standard_normal((7, 64)) * 0.02)]
    embd = np.asarray(rows, dtype=np.float32)[:16]
    infos = [p.info for p in tensor_plan(cfg, FileType.ALL_F32)]
    kvs = metadata_kvs(cfg, FileType.ALL_F32, "h", 1) + [KV("tokenizer.ggml.model", ValueType.STRING, "none")]
    head = build_header(kvs, infos)
    raw = bytearray(head.size)
    raw[: len(head.header)] = head.header
    raw[head.tensor_offsets[0] : head.tensor_offsets[0] + embd.nbytes] = embd.tobytes()
    for info, offset in zip(infos[1:], head.tensor_offsets[1:], strict=True):  # other weights: ones (valid, finite)
        n = int(np.prod(info.ne))
        raw[offset : offset + 4 * n] = np.ones(n, np.float32).tobytes()
    f32 = tmp_path / "h.f32.gguf"
    f32.write_bytes(bytes(raw))
    _llama_cpp_quantize(str(f32), str(tmp_path / "h.q8_0.gguf"), 7)
    with GgufSource(str(f32)) as src:
        export_gguf(src, [("gguf-q8_0", str(tmp_path / "ours.gguf"))], GgufModelInfo("h"), quiet=True)
    theirs, ours = _tensor_bytes(str(tmp_path / "h.q8_0.gguf")), _tensor_bytes(str(tmp_path / "ours.gguf"))
    assert theirs["token_embd.weight"] == ours["token_embd.weight"]


@pytest.mark.slow  # transformers' model (~5-10 s to import)
def test_a_llama_cpp_gguf_becomes_a_v0_that_the_c_consumer_runs(tmp_path, reference) -> None:
    """The converter's own F32 GGUF -> v0 -> llama2bin's C consumer (run.c's reading of a v0):
    greedy tokens equal transformers' on the original checkpoint."""
    compiler = find_compiler()
    if compiler is None:
        pytest.skip("no C compiler: the C consumer cannot be built")
    v0 = str(tmp_path / "m.v0.bin")
    with GgufSource(os.path.join(DATA, "tiny_hf_gqa.f32.gguf")) as src:
        export(src, [("0", v0)], quiet=True)
    seq = PROMPT[:4]
    with Consumer(compiler) as consumer:
        for _ in range(12):
            seq.append(int(np.argmax(consumer.logits(v0, seq, "f32")[-1])))
    assert seq[4:] == transformers_greedy(reference, PROMPT[:4], 12)


def test_llama_cpp_tokenizes_with_our_gpt2_vocabulary(tmp_path) -> None:
    """A byte-level BPE (Llama 3's pre-split regex) trained offline with `tokenizers`, written as
    tokenizer.ggml.model gpt2 / pre llama-bpe with merges: llama.cpp encodes texts to the same ids
    as the tokenizers library does from the tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    from bpe_vocab import LLAMA3_PATTERN

    from llama2bin.formats.gguf_vocab import bpe_vocab
    from llama2bin.tokenizer import read_tokenizer

    tok = tokenizers.Tokenizer(tokenizers.models.BPE(ignore_merges=True))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = tokenizers.decoders.ByteLevel()
    words = ["the", "cat", "sat", "über", "café", "日本語", "hello", "world", "it's", "12345", "3.14", "emoji 🦙", "C++"]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(30)]
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    vocab = read_tokenizer(str(tmp_path / "tokenizer.json"))
    n = tok.get_vocab_size()
    cfg = ModelConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=n + 2, max_seq_len=64,
                      shared_classifier=True)
    gv = bpe_vocab(vocab, cfg.vocab_size)
    assert gv.model == "gpt2" and gv.pre == "llama-bpe" and gv.tokens[-1] == f"[PAD{n + 1}]".encode()
    layout_kvs = metadata_kvs(cfg, FileType.ALL_F32, "bpe", 1)
    from llama2bin.formats.gguf_vocab import vocab_kvs

    infos = [p.info for p in tensor_plan(cfg, FileType.ALL_F32)]
    head = build_header(layout_kvs + vocab_kvs(gv), infos)
    raw = bytearray(head.size)
    raw[: len(head.header)] = head.header
    for info, offset in zip(infos, head.tensor_offsets, strict=True):
        count = int(np.prod(info.ne))
        raw[offset : offset + 4 * count] = np.full(count, 0.01, np.float32).tobytes()
    path = tmp_path / "bpe.gguf"
    path.write_bytes(bytes(raw))
    lib = _binding()
    with LlamaCppModel(str(path), 64) as m:
        handle = lib.llama_model_get_vocab(m.model)
        buf = (ctypes.c_int32 * 512)()
        for text in [*texts[:10], "Hello World! über 日本語 🦙🦙 it's   spaced\n\nlines\t3.14159 don't"]:
            raw_text = text.encode()
            count = lib.llama_tokenize(handle, raw_text, len(raw_text), buf, 512, False, False)
            assert list(buf[:count]) == tok.encode(text, add_special_tokens=False).ids, text
