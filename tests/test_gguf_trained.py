"""GGUF of a model trained for real (tests/trained_model.py): bit-exact encodings of trained
weights, and llama.cpp generating what the numpy reference generates from a llama2.c checkpoint.

Greedy tokens of a trained model mean something: at most positions it is confident, so equal
tokens over a long continuation are a real agreement, not a coincidence of a flat distribution.
"""

from __future__ import annotations

import os
import struct
import warnings

import numpy as np
import pytest

pytest.importorskip("torch")

import trained_model  # noqa: E402
from gguf import GGMLQuantizationType, quants  # noqa: E402

from llama2bin.checks.forward import logits  # noqa: E402
from llama2bin.checks.weights import SourceWeights  # noqa: E402
from llama2bin.formats.gguf_encode import encode_into, encoded_nbytes  # noqa: E402
from llama2bin.formats.gguf_vocab import tokenizer_bin_vocab  # noqa: E402
from llama2bin.formats.gguf_write import GgufModelInfo, export_gguf  # noqa: E402
from llama2bin.formats.q8_0 import Scratch  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.sources.gguf_file import GgmlType  # noqa: E402

pytestmark = pytest.mark.slow  # trains a model (seconds to tens of seconds on a shared machine)
N_NEW = 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("trained") / "trained.pt")
    trained_model.train(path)
    return path


def tokenizer_bin(path: str) -> str:
    """A llama2.c tokenizer.bin of the grammar's words (ids as trained_model.VOCAB)."""
    words = [w.encode() for w in trained_model.WORDS] + [f"<0x{i:02X}>".encode() for i in range(64 - len(trained_model.WORDS))]
    body = b"".join(struct.pack("<fI", 0.0, len(w)) + w for w in words)
    with open(path, "wb") as f:
        f.write(struct.pack("<I", max(len(w) for w in words)) + body)
    return path


def test_trained_weights_encode_as_gguf_py(trained) -> None:
    reference = {GgmlType.F16: GGMLQuantizationType.F16, GgmlType.BF16: GGMLQuantizationType.BF16,
                 GgmlType.Q8_0: GGMLQuantizationType.Q8_0}
    with open_source("llama2c", trained) as src:
        for name in src.config.shapes():
            t = src.tensor(name)
            x = np.ascontiguousarray(t.read_rows(0, t.rows)).reshape(-1)
            for ggml_type, ref_type in reference.items():
                if ggml_type == GgmlType.Q8_0 and t.cols % 32:
                    continue
                out = np.empty(encoded_nbytes(ggml_type, x.size), np.uint8)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    want = quants.quantize(x.reshape(t.rows, t.cols), ref_type).tobytes()
                assert encode_into(ggml_type, x, out, Scratch(), name).tobytes() == want, (name, ggml_type)


@pytest.mark.parametrize("with_tokenizer", [False, True], ids=["no-vocab", "tokenizer.bin"])
def test_llama_cpp_generates_what_the_reference_generates(trained, tmp_path, with_tokenizer: bool) -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("LLAMA2BIN_REQUIRE_LLAMACPP"):
            raise
        pytest.skip("llama-cpp-python is not installed: the llama.cpp client checks are skipped")
    from llama2bin.checks.llamacpp import llamacpp_greedy, llamacpp_logits

    with open_source("llama2c", trained) as src:
        cfg = src.config
        vocab = tokenizer_bin_vocab(tokenizer_bin(str(tmp_path / "tok.bin")), cfg.vocab_size) if with_tokenizer else None
        paths = {t: str(tmp_path / f"m.{t}.gguf") for t in ("f32", "f16", "bf16", "q8_0")}
        export_gguf(src, [(f"gguf-{t}", p) for t, p in paths.items()], GgufModelInfo("trained", vocab), quiet=True)
        weights = SourceWeights(src)
        seq = [1]
        for _ in range(min(N_NEW, cfg.max_seq_len - 1)):
            seq.append(int(np.argmax(logits(weights, cfg, seq)[-1])))
        want = logits(weights, cfg, seq)
    words = [trained_model.WORDS[i] for i in seq]
    assert words[1] in trained_model.NAMES and words[3] == "the"  # the model has learned its grammar
    for t in ("f32", "f16"):
        assert [1, *llamacpp_greedy(paths[t], [1], len(seq) - 1)] == seq, t
    got = llamacpp_logits(paths["f32"], [seq])[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    for t in ("bf16", "q8_0"):  # lossy: same top token at nearly every position (teacher-forced)
        top = llamacpp_logits(paths[t], [seq])[0].argmax(axis=1)
        assert (top == want.argmax(axis=1)).mean() >= 0.9, t


def test_v2_and_gguf_q8_0_on_the_same_tokens(trained, tmp_path) -> None:
    """llama2.c's Q8_0 (v2: groups of 64, float32 scales, round half to even) and GGUF's (blocks
    of 32, float16 scales, round half away) of the same trained model, verified on the same
    evaluation tokens by the same forward pass. Both cost 8.5 bits per matrix weight; the
    smaller blocks give GGUF the smaller weight error (the scale follows the local maximum more
    closely), and both stay well within the default quality limits. The measured numbers are
    in README "GGUF" (bench/gguf_q8_compare.py)."""
    from llama2bin.checks.eval_tokens import sampled_tokens
    from llama2bin.checks.functional import QualityLimits, ReferenceModel
    from llama2bin.checks.verification import verify_output
    from llama2bin.formats import FORMATS
    from llama2bin.formats.families import ExportOptions, write_outputs

    v2, gguf = str(tmp_path / "t.v2.bin"), str(tmp_path / "t.q8_0.gguf")
    with open_source("llama2c", trained) as src:
        write_outputs(src, [(FORMATS["2"], v2), (FORMATS["gguf-q8_0"], gguf)], ExportOptions(quiet=True))
        reference = ReferenceModel(src, sampled_tokens(src, 8, 32, 0, quiet=True))
        results = {name: verify_output(path, src, reference=reference) for name, path in (("v2", v2), ("gguf", gguf))}
    for name, r in results.items():
        assert r.correct and not r.quality.exceeded, (name, r.failures)
        assert r.functional.eval == reference.tokens.summary()  # the same tokens, the same recipe and sha256
    fv2, fg = results["v2"].functional, results["gguf"].functional
    assert fv2.kld_mean > 0 and fg.kld_mean > 0 and min(fv2.same_top, fg.same_top) >= 0.95
    assert max(fv2.kld_mean, fg.kld_mean) < QualityLimits().kld_mean_max / 100
    assert results["v2"].tensor.group_size == 64 and results["gguf"].tensor.group_size == 32

    def weight_sq_err(r) -> float:  # type: ignore[no-untyped-def]
        return sum(t.rmse ** 2 * np.prod(t.shape) for t in r.tensor.tensors if t.encoding == "q8_0")

    assert weight_sq_err(results["gguf"]) < weight_sq_err(results["v2"])
    assert os.path.getsize(gguf) < os.path.getsize(v2) * 1.05  # 34 bytes per 32 weights vs 66 per 64 (+ header)
