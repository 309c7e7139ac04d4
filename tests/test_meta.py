"""Meta consolidated.NN.pth checkpoints: shards concatenated lazily, checked against transformers.

The shards are split from the same canonical weights transformers runs (after the Meta -> HF
permutation of its conversion script), so a correct export must give transformers' logits, and
must be byte-identical to the export of the same model saved as a Hugging Face directory.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llama_checkpoints import (  # noqa: E402
    TOKENS,
    Spec,
    canonical_weights,
    export_refused,
    hf_logits,
    hf_model,
    meta_params,
    model_from_canonical,
    rounded_model,
    run,
    save_hf,
    save_meta,
)

from llama2bin.checks.forward import bin_logits  # noqa: E402
from llama2bin.checks.verification import verify_output  # noqa: E402
from llama2bin.checks.weights import weights_from_bin  # noqa: E402
from llama2bin.constants import DEFAULT_MAX_SEQ_LEN  # noqa: E402
from llama2bin.formats.reader import BinFile  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.sources.base import TensorRef  # noqa: E402
from llama2bin.sources.meta import ConcatTensor  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5
V2_REL_TOL = 0.03  # see test_hf.py: Q8_0 moves each weight by <= scale/2, ~2% on the logits

CASES = {
    # name: (spec, n_shards, dtype)
    "mha_untied_1shard_f32": (Spec(), 1, torch.float32),
    "gqa_untied_2shards_bf16": (Spec(n_kv_heads=2, seed=1), 2, torch.bfloat16),
    "mha_tied_2shards_f32": (Spec(tied=True, seed=2), 2, torch.float32),
    "mha_untied_4shards_f16": (Spec(seed=3), 4, torch.float16),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            spec, n_shards, dtype = CASES[name]
            built[name] = save_meta(spec, str(root / name), n_shards, dtype=dtype)
        return built[name]

    return get



@pytest.mark.parametrize("name", list(CASES))
def test_export_gives_transformers_logits(name, checkpoints, tmp_path, capsys):
    spec, n_shards, dtype = CASES[name]
    src = checkpoints(name)
    assert sorted(f for f in os.listdir(src) if f.endswith(".pth")) == [f"consolidated.{i:02d}.pth" for i in range(n_shards)]
    v0, v2 = str(tmp_path / "m.v0.bin"), str(tmp_path / "m.v2.bin")
    rc, _, err = run(["export", v0, v2, "--version", "0", "2", "--meta-llama", src, "--max-seq-len", "16", "--quiet"],
                     capsys)
    assert rc == 0, err

    want = hf_logits(rounded_model(hf_model(spec), dtype))  # transformers on the values the shards hold
    np.testing.assert_allclose(bin_logits(v0, TOKENS), want, atol=ATOL, rtol=RTOL)
    with BinFile(v2) as bf:
        cfg = bf.config
        dequantized = weights_from_bin(bf)
    # Meta always stores `output`; it is shared exactly when it equals the embeddings.
    assert cfg.shared_classifier == spec.tied and cfg.n_kv_heads == spec.n_kv_heads and cfg.vocab_size == spec.vocab
    got2 = bin_logits(v2, TOKENS)
    np.testing.assert_allclose(got2, hf_logits(model_from_canonical(spec, dequantized)), atol=ATOL, rtol=RTOL)
    assert np.linalg.norm(got2 - want) / np.linalg.norm(want) < V2_REL_TOL

    with open_source("meta", src, max_seq_len=16) as source:
        assert source.describe()["shards"] == [f"consolidated.{i:02d}.pth" for i in range(n_shards)]
        for path in (v0, v2):
            assert verify_output(path, source).tensor.passed


def test_meta_and_hf_exports_of_one_model_are_identical(checkpoints, tmp_path, capsys):
    spec, _, dtype = CASES["gqa_untied_2shards_bf16"]
    meta = checkpoints("gqa_untied_2shards_bf16")
    hf = save_hf(hf_model(spec), str(tmp_path / "hf"), dtype=dtype, max_shard_size="20KB")
    for version in (0, 2):
        a, b = tmp_path / f"meta.v{version}.bin", tmp_path / f"hf.v{version}.bin"
        assert run(["export", str(a), "--version", str(version), "--meta-llama", meta, "--max-seq-len", "16", "--quiet"],
                   capsys)[0] == 0
        assert run(["export", str(b), "--version", str(version), "--hf", hf, "--quiet"], capsys)[0] == 0
        assert a.read_bytes() == b.read_bytes(), f"v{version}"


def test_max_seq_len_default_and_override(checkpoints, tmp_path):
    src = checkpoints("mha_untied_1shard_f32")
    with open_source("meta", src) as s:
        assert s.config.max_seq_len == DEFAULT_MAX_SEQ_LEN == 2048
    with open_source("meta", src, max_seq_len=100) as s:
        assert s.config.max_seq_len == 100
    copy = tmp_path / "with_len"
    shutil.copytree(src, copy)
    (copy / "params.json").write_text(json.dumps(meta_params(CASES["mha_untied_1shard_f32"][0], max_seq_len=64)))
    with open_source("meta", str(copy)) as s:
        assert s.config.max_seq_len == 64
    with open_source("meta", str(copy), max_seq_len=32) as s:
        assert s.config.max_seq_len == 32


def test_vocab_size_given_explicitly_and_tokenizer(checkpoints, tmp_path):
    spec = CASES["gqa_untied_2shards_bf16"][0]
    copy = tmp_path / "explicit"
    shutil.copytree(checkpoints("gqa_untied_2shards_bf16"), copy)
    (copy / "params.json").write_text(json.dumps(meta_params(spec, vocab_size=spec.vocab)))
    (copy / "tokenizer.model").write_bytes(b"sentencepiece model bytes")
    with open_source("meta", str(copy)) as s:
        assert s.config.vocab_size == spec.vocab
        assert s.tokenizer_path == str(copy / "tokenizer.model")


def test_rope_theta_is_refused_unless_allowed(tmp_path, capsys):
    spec = Spec(n_kv_heads=2, rope_theta=500000.0, seed=7)
    src = save_meta(spec, str(tmp_path / "src"), 2)
    out = tmp_path / "out"
    export_refused(["export", str(out / "m.bin"), "--meta-llama", src], out, capsys,
                   "params.json: rope_theta = 500000", "--allow-rope-theta")
    rc, _, err = run(["export", str(out / "m.bin"), "--meta-llama", src, "--max-seq-len", "16", "--allow-rope-theta",
                      "--quiet"], capsys)
    assert rc == 0, err
    with open_source("meta", src, allow_rope_theta=True) as s:
        assert s.config.rope_theta == 500000.0 and s.config.accepted_departures == ("rope_theta=500000.0",)


# ---- ConcatTensor -------------------------------------------------------------------------


class _CountingRef(TensorRef):
    def __init__(self, array: np.ndarray):
        self.array, self.reads = array, []
        self.name, self.shape = "t", array.shape

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.reads.append((start, stop))
        return self.array[start:stop].copy()

    def identity(self):
        return None


@pytest.mark.parametrize("axis", [0, 1])
def test_concat_reads_only_the_rows_asked_for(axis):
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal((6, 4) if axis == 0 else (6, 3)).astype(np.float32) for _ in range(3)]
    parts = [_CountingRef(p) for p in pieces]
    t = ConcatTensor("t", parts, axis)  # type: ignore[arg-type]
    whole = np.concatenate(pieces, axis=axis)
    assert t.shape == whole.shape
    ranges = [(0, 18), (2, 5), (5, 13), (12, 18), (6, 12)] if axis == 0 else [(0, 6), (2, 5), (5, 6)]
    for start, stop in ranges:
        for p in parts:
            p.reads.clear()
        assert np.array_equal(t.read_rows(start, stop), whole[start:stop])
        if axis == 1:  # every shard holds a slice of every row
            assert all(p.reads == [(start, stop)] for p in parts)
        else:  # only the shards holding those rows, only those rows
            expected = [[(max(start, 6 * i) - 6 * i, min(stop, 6 * i + 6) - 6 * i)] if start < 6 * i + 6 and stop > 6 * i
                        else [] for i in range(3)]
            assert [p.reads for p in parts] == expected


# ---- refusals -----------------------------------------------------------------------------




def _export_argv(tmp_path, src) -> list[str]:
    out = tmp_path / "out"
    return ["export", str(out / "m.bin"), str(out / "m2.bin"), "--version", "0", "2", "--meta-llama", str(src), "--quiet"]


def test_missing_params(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"norm.weight": torch.ones(4)}, src / "consolidated.00.pth")
    export_refused(_export_argv(tmp_path, src), tmp_path / "out", capsys, "no params.json")


def test_no_shards(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "params.json").write_text(json.dumps(meta_params(Spec())))
    export_refused(_export_argv(tmp_path, src), tmp_path / "out", capsys, "no consolidated.NN.pth")


def test_missing_shard(checkpoints, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("mha_untied_4shards_f16"), src)
    os.remove(src / "consolidated.02.pth")
    export_refused(_export_argv(tmp_path, src), tmp_path / "out", capsys, "consolidated.02.pth is missing")


def _shard_edit(tmp_path, checkpoints, name: str, shard: int, edit) -> str:
    src = tmp_path / "src"
    shutil.copytree(checkpoints(name), src)
    path = src / f"consolidated.{shard:02d}.pth"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return str(src)


@pytest.mark.parametrize("case,edit,needles", [
    ("shape", lambda s: s.update({"layers.0.attention.wq.weight": torch.zeros(8, 32)}),
     ["consolidated.01.pth: tensor layers.0.attention.wq.weight has shape [8, 32]", "consolidated.00.pth has [16, 32]"]),
    ("missing", lambda s: s.pop("layers.1.feed_forward.w3.weight"),
     ["consolidated.01.pth: missing tensor layers.1.feed_forward.w3.weight"]),
    ("norm_differs", lambda s: s["layers.1.ffn_norm.weight"].mul_(2),
     ["consolidated.01.pth: tensor layers.1.ffn_norm.weight differs", "replicated"]),
    ("nan", lambda s: s["layers.1.attention.wo.weight"].__setitem__((0, 0), float("inf")),
     ["tensor layers.1.attention.wo.weight contains NaN or Inf"]),
])
def test_shard_disagreements(case, edit, needles, checkpoints, tmp_path, capsys):
    src = _shard_edit(tmp_path, checkpoints, "mha_tied_2shards_f32", 1, edit)
    export_refused(_export_argv(tmp_path, src), tmp_path / "out", capsys, *needles)


@pytest.mark.parametrize("case,edit,needles", [
    ("bias", lambda s: s.update({"layers.0.attention.wq.bias": torch.zeros(32)}),
     ["consolidated.00.pth: unexpected bias layers.0.attention.wq.bias"]),
    ("extra", lambda s: s.update({"layers.0.attention.q_norm.weight": torch.ones(8)}),
     ["unexpected tensor layers.0.attention.q_norm.weight"]),
    ("layer_beyond", lambda s: s.update({"layers.2.ffn_norm.weight": torch.ones(32)}),
     ["unexpected tensor layers.2.ffn_norm.weight"]),
    ("no_output", lambda s: s.pop("output.weight"), ["missing tensor output.weight"]),
])
def test_unexpected_tensors(case, edit, needles, checkpoints, tmp_path, capsys):
    src = _shard_edit(tmp_path, checkpoints, "mha_untied_1shard_f32", 0, edit)
    export_refused(_export_argv(tmp_path, src), tmp_path / "out", capsys, *needles)


@pytest.mark.parametrize("case,changes,needles", [
    ("scaled_rope", {"rope_theta": 500000.0, "use_scaled_rope": True},
     ["rope_theta = 500000 and use_scaled_rope is llama3 (factor 8, low_freq_factor 1, high_freq_factor 4, "
      "original_max_position_embeddings 8192)", "--allow-rope-theta"]),
    ("scaled_rope_type", {"use_scaled_rope": "yes"}, ["use_scaled_rope must be true or false, got a string"]),
    ("unknown_field", {"moe_experts": 8}, ["params.json: unknown field moe_experts = 8"]),
    ("no_dim", {"dim": None}, ["params.json: no dim"]),
    ("vocab_mismatch", {"vocab_size": 100}, ["tok_embeddings.weight has shape [64, 32]", "[100, 32]"]),
    ("bad_heads", {"n_heads": 5}, ["params.json: dim 32 is not a multiple of n_heads 5"]),
])
def test_params_refusals(case, changes, needles, checkpoints, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(checkpoints("mha_untied_1shard_f32"), src)
    params = meta_params(CASES["mha_untied_1shard_f32"][0])
    params.update(changes)
    params = {k: v for k, v in params.items() if v is not None}
    (src / "params.json").write_text(json.dumps(params))
    export_refused(_export_argv(tmp_path, src), tmp_path / "out", capsys, *needles)


def test_column_split_tensor_reads_a_row_range_from_real_shards(checkpoints):
    """w2 is split along columns: rows 3..9 are stitched from both bf16 shards."""
    src = checkpoints("gqa_untied_2shards_bf16")
    with open_source("meta", src) as s:
        t = s.tensor("layers.0.feed_forward.w2")
        assert isinstance(t, ConcatTensor) and t.axis == 1 and t.shape == (32, 96)
        w = canonical_weights(CASES["gqa_untied_2shards_bf16"][0])["layers.0.feed_forward.w2.weight"]
        assert np.array_equal(t.read_rows(3, 9), w.to(torch.bfloat16).float().numpy()[3:9])
