"""Hugging Face directories in: every layout transformers writes, checked against transformers' forward.

Each checkpoint is a real LlamaForCausalLM saved with save_pretrained (or the older
pytorch_model*.bin layout); the exported .bin must give the logits transformers computes when
it loads that same directory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from llama_checkpoints import (  # noqa: E402
    TOKENS,
    Spec,
    export_refused,
    hf_config,
    hf_logits,
    hf_model,
    model_from_canonical,
    run,
    save_hf,
)

from llama2bin.checks.forward import bin_logits  # noqa: E402
from llama2bin.checks.verification import verify_output  # noqa: E402
from llama2bin.checks.weights import weights_from_bin  # noqa: E402
from llama2bin.formats.reader import BinFile  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.sources.base import TensorRef  # noqa: E402
from llama2bin.sources.hf import HfRotaryRef  # noqa: E402
from llama2bin.sources.safetensors import SafetensorsFile  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
# v0 holds the source's float32 values exactly: only float32 summation order differs.
ATOL, RTOL = 1e-4, 1e-5
# v2 holds Q8_0 values: each weight moves by at most scale/2 = max|group|/254, an RMS of about
# 0.5% of a Gaussian weight (uniform error, max ~2.1 sigma in a group of 32). About 16 quantized
# matrices lie on the path to a logit (embedding, 7 per layer x 2, classifier); independent
# errors add in quadrature to ~sqrt(16) x 0.5% = 2%. 3% leaves headroom; a layout error (wrong
# tensor, wrong rotary order) is O(100%).
V2_REL_TOL = 0.03

CASES = {
    # name: (spec, format, dtype, max_shard_size)
    "mha_untied_safetensors_f32": (Spec(), "safetensors", torch.float32, None),
    "gqa_tied_safetensors_bf16_sharded": (Spec(n_kv_heads=2, tied=True, seed=1), "safetensors", torch.bfloat16, "20KB"),
    "gqa_untied_safetensors_f16": (Spec(n_kv_heads=2, seed=2), "safetensors", torch.float16, None),
    "gqa_untied_bin_f32_sharded": (Spec(n_kv_heads=2, seed=3), "bin", torch.float32, 20000),
    "mha_tied_bin_bf16": (Spec(tied=True, seed=4), "bin", torch.bfloat16, None),
    "mqa_untied_safetensors_bf16_sharded": (Spec(n_kv_heads=1, seed=5), "safetensors", torch.bfloat16, "10KB"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> saved HF directory (built lazily, once per module)."""
    root = tmp_path_factory.mktemp("hf")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            spec, fmt, dtype, shard = CASES[name]
            built[name] = save_hf(hf_model(spec), str(root / name), fmt=fmt, dtype=dtype, max_shard_size=shard)
        return built[name]

    return get



def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("name", list(CASES))
def test_export_gives_transformers_logits(name, checkpoints, tmp_path, capsys):
    spec, fmt, dtype, shard = CASES[name]
    src = checkpoints(name)
    if shard is not None:
        index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
        assert len(set(json.load(open(os.path.join(src, index)))["weight_map"].values())) > 2
    v0, v2 = str(tmp_path / "m.v0.bin"), str(tmp_path / "m.v2.bin")
    rc, _, err = run(["export", v0, v2, "--version", "0", "2", "--hf", src, "--quiet"], capsys)
    assert rc == 0, err

    want = hf_logits(src)  # transformers reads the directory itself
    np.testing.assert_allclose(bin_logits(v0, TOKENS), want, atol=ATOL, rtol=RTOL)

    with BinFile(v2) as bf:
        cfg = bf.config
        dequantized = weights_from_bin(bf)
    assert cfg.shared_classifier == spec.tied and cfg.n_kv_heads == spec.n_kv_heads and cfg.max_seq_len == spec.max_pos
    got2 = bin_logits(v2, TOKENS)
    # Exact check of v2's layout: transformers on the very values v2 holds.
    np.testing.assert_allclose(got2, hf_logits(model_from_canonical(spec, dequantized)), atol=ATOL, rtol=RTOL)
    assert rel_err(got2, want) < V2_REL_TOL

    with open_source("hf", src) as source:
        for path in (v0, v2):
            assert verify_output(path, source).tensor.passed


@pytest.mark.parametrize("version", [0, 2])
def test_golden_tiny_hf_untied_bytes(version, tmp_path, capsys):
    out = tmp_path / f"m.v{version}.bin"
    rc, _, err = run(["export", str(out), "--version", str(version), "--hf", os.path.join(DATA, "tiny_hf_untied"),
                      "--quiet"], capsys)
    assert rc == 0, err
    assert out.read_bytes() == open(os.path.join(DATA, f"tiny_hf_untied.v{version}.bin"), "rb").read()


def test_transformers4_config_and_inv_freq_buffers_give_the_same_file(checkpoints, tmp_path, capsys):
    """Older configs (top-level rope_theta, rope_scaling null) and .bin files carrying the
    rotary_emb.inv_freq buffers export exactly like the transformers 5 layout."""
    src = checkpoints("mha_untied_safetensors_f32")
    old = tmp_path / "old"
    old.mkdir()
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=10000.0, rope_scaling=None, torch_dtype="float32")
    (old / "config.json").write_text(json.dumps(cfg))
    state = safetensors_torch.load_file(os.path.join(src, "model.safetensors"))
    for i in range(CASES["mha_untied_safetensors_f32"][0].n_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    torch.save(state, old / "pytorch_model.bin")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    assert run(["export", str(a), "--hf", src, "--quiet"], capsys)[0] == 0
    assert run(["export", str(b), "--hf", str(old), "--quiet"], capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_mistral_without_sliding_window_is_a_llama(checkpoints, tmp_path, capsys):
    src = checkpoints("mha_untied_safetensors_f32")
    mistral = tmp_path / "mistral"
    shutil.copytree(src, mistral)
    cfg = json.load(open(mistral / "config.json"))
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    (mistral / "config.json").write_text(json.dumps(cfg))
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    assert run(["export", str(a), "--hf", src, "--quiet"], capsys)[0] == 0
    assert run(["export", str(b), "--hf", str(mistral), "--quiet"], capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_rope_theta_is_refused_unless_allowed(tmp_path, capsys):
    spec = Spec(n_kv_heads=2, rope_theta=500000.0, seed=6)
    src = save_hf(hf_model(spec), str(tmp_path / "src"))
    out = tmp_path / "out"
    rc, _, err = run(["export", str(out / "m.bin"), "--hf", src], capsys)
    assert rc == 1 and "rope_parameters.rope_theta = 500000" in err and "--allow-rope-theta" in err
    assert not os.path.exists(out) or os.listdir(out) == []

    rc, _, err = run(["export", str(out / "m.bin"), "--hf", src, "--allow-rope-theta", "--quiet"], capsys)
    assert rc == 0, err
    with open_source("hf", src, allow_rope_theta=True) as source:
        cfg = source.config
        assert cfg.rope_theta == 500000.0 and cfg.accepted_departures == ("rope_theta=500000.0",)
        result = verify_output(str(out / "m.bin"), source).tensor
    assert result.passed and result.to_json()["source"]["config"]["accepted_departures"] == ["rope_theta=500000.0"]
    # The weights are right for the model's own base: forwarding them with it gives transformers' logits.
    with BinFile(str(out / "m.bin")) as bf:
        weights = weights_from_bin(bf)
    from llama2bin.checks.forward import logits

    np.testing.assert_allclose(logits(weights, cfg, TOKENS), hf_logits(src), atol=ATOL, rtol=RTOL)


def test_max_seq_len_from_config_or_override(checkpoints, tmp_path):
    src = checkpoints("mha_untied_safetensors_f32")
    with open_source("hf", src) as s:
        assert s.config.max_seq_len == 16
    with open_source("hf", src, max_seq_len=40) as s:
        assert s.config.max_seq_len == 40


def test_tokenizer_model_is_found(checkpoints, tmp_path):
    src = checkpoints("mha_untied_safetensors_f32")
    with open_source("hf", src) as s:
        assert s.tokenizer_path is None
    copy = tmp_path / "with_tok"
    shutil.copytree(src, copy)
    (copy / "tokenizer.model").write_bytes(b"sentencepiece model bytes")
    with open_source("hf", str(copy)) as s:
        assert s.tokenizer_path == str(copy / "tokenizer.model")
        assert s.describe() == {"kind": "hf", "name": "with_tok", "weights": {"format": "safetensors", "files": 1}}


# ---- lazy reads ---------------------------------------------------------------------------


class _CountingRef(TensorRef):
    """Records every row range read from an in-memory matrix."""

    def __init__(self, array: np.ndarray):
        self.array, self.reads = array, []
        self.name, self.shape = "t", array.shape

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.reads.append((start, stop))
        return self.array[start:stop].copy()


def test_rotary_ref_reads_only_the_heads_it_needs():
    n, hd, dim = 6, 8, 5
    w = np.arange(n * hd * dim, dtype=np.float32).reshape(n * hd, dim)
    canonical = torch.from_numpy(w).reshape(n, 2, hd // 2, dim).transpose(1, 2).reshape(n * hd, dim).numpy()
    src = _CountingRef(w)
    ref = HfRotaryRef(src, hd)  # type: ignore[arg-type]
    for start, stop in [(0, n * hd), (3, 5), (7, 17), (16, 24), (40, 48)]:
        src.reads.clear()
        assert np.array_equal(ref.read_rows(start, stop), canonical[start:stop])
        assert src.reads == [(start // hd * hd, -(-stop // hd) * hd)]


def test_safetensors_reader_offsets_and_bf16(tmp_path):
    t = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.randn(5, dtype=torch.float16), "c": torch.randn(2, 6)}
    path = str(tmp_path / "x.safetensors")
    safetensors_torch.save_file(t, path)
    from llama2bin.sources.base import FilePool

    pool = FilePool()
    st = SafetensorsFile(path, pool)
    assert sorted(st.names) == ["a", "b", "c"]
    for name, value in t.items():
        ref = st.tensor(name)
        assert ref.shape == tuple(value.shape)
        want = value.float().numpy().reshape(ref.rows, ref.cols)
        assert np.array_equal(ref.read_rows(0, ref.rows), want)
    assert np.array_equal(st.tensor("c").read_rows(1, 2), t["c"][1:2].numpy())
    pool.close()


# ---- refusals -----------------------------------------------------------------------------




def edited_copy(src: str, dst, config_changes: dict | None = None, drop: tuple[str, ...] = ()) -> str:
    shutil.copytree(src, dst)
    if config_changes is not None:
        cfg = json.load(open(os.path.join(dst, "config.json")))
        for key, value in config_changes.items():
            if value is _DROP:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        with open(os.path.join(dst, "config.json"), "w") as f:
            json.dump(cfg, f)
    return str(dst)


_DROP = object()

CONFIG_REFUSALS = {
    "gpt2": ({"model_type": "gpt2"}, ["config.json", "model_type 'gpt2'"]),
    "mistral_sliding": ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4096},
                        ["sliding_window = 4096"]),
    "mistral_default_sliding": ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, ["sliding_window"]),
    "architecture": ({"architectures": ["LlamaForSequenceClassification"]}, ["architectures"]),
    # rope scaling loads, and is refused by the .bin formats unless --allow-rope-theta
    "rope_scaling_v4": ({"rope_parameters": _DROP, "rope_scaling": {"type": "linear", "factor": 2.0}},
                        ["rope_scaling is linear (factor 2)", "--allow-rope-theta"]),
    "rope_llama3_v5": ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192}},
                       ["rope_parameters.rope_theta = 500000 and rope_parameters is llama3 (factor 32, low_freq_factor 1, "
                        "high_freq_factor 4, original_max_position_embeddings 8192)", "--allow-rope-theta"]),
    "rope_type_llama3_incomplete": ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}},
                                    ["rope_parameters has rope_type 'llama3' but no low_freq_factor"]),
    "rope_type_yarn": ({"rope_parameters": _DROP, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
                       ["rope_scaling has rope_type 'yarn'", "default, linear and llama3"]),
    "rope_type_dynamic_v4": ({"rope_parameters": _DROP, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
                             ["rope_type 'dynamic'"]),
    "rope_string": ({"rope_parameters": "llama3"}, ["rope_parameters must be an object, got a string"]),
    "rope_llama3_bands": ({"rope_parameters": _DROP,
                           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
                          ["high_freq_factor = 4 is not above low_freq_factor = 4"]),
    "rope_llama3_factor": ({"rope_parameters": _DROP,
                            "rope_scaling": {"rope_type": "llama3", "factor": "8", "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
                           ["rope_scaling.factor must be a positive finite number, got a string"]),
    "rope_linear_extra": ({"rope_parameters": _DROP, "rope_scaling": {"rope_type": "linear", "factor": 2.0, "mscale": 1.0}},
                          ["rope_scaling.mscale = 1.0 is not a parameter of rope_type 'linear'"]),
    "rope_both_disagree": ({"rope_scaling": {"rope_type": "linear", "factor": 2.0},
                            "rope_parameters": {"rope_type": "linear", "factor": 4.0}},
                           ["rope_scaling and rope_parameters disagree"]),
    "rope_partial": ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
                     ["rope_parameters.partial_rotary_factor = 0.5"]),
    "eos_type": ({"eos_token_id": [2, "x"]}, ["eos_token_id must be an integer, got a string"]),
    "eos_beyond_vocab": ({"eos_token_id": [2, 64]}, ["eos_token_id 64 is outside the vocabulary of 64"]),
    "rope_factor": ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "factor": 2.0}},
                    ["rope_parameters", "factor"]),
    "rope_theta_v5": ({"rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
                      ["rope_parameters.rope_theta = 1e+06"]),
    "rope_theta_v4": ({"rope_parameters": _DROP, "rope_theta": 500000.0}, ["rope_theta = 500000"]),
    "attention_bias": ({"attention_bias": True}, ["attention_bias = True"]),
    "mlp_bias": ({"mlp_bias": True}, ["mlp_bias = True"]),
    "head_dim": ({"head_dim": 16}, ["head_dim = 16 but hidden_size / num_attention_heads = 32/4 = 8",
                                    "no llama2.c format stores a head size"]),
    "hidden_act": ({"hidden_act": "gelu"}, ["hidden_act = 'gelu'"]),
    "tie_mismatch": ({"tie_word_embeddings": True}, ["tie_word_embeddings is true", "lm_head.weight differs"]),
    "kv_heads": ({"num_key_value_heads": 3}, ["config.json", "n_kv_heads 3"]),
    "layers": ({"num_hidden_layers": 3}, ["missing tensor model.layers.2."]),
    "quantized": ({"quantization_config": {"quant_method": "gptq"}}, ["quantization_config"]),
}


@pytest.mark.parametrize("case", list(CONFIG_REFUSALS))
def test_config_refusals(case, checkpoints, tmp_path, capsys):
    changes, needles = CONFIG_REFUSALS[case]
    src = edited_copy(checkpoints("mha_untied_safetensors_f32"), tmp_path / "src", changes)
    out = tmp_path / "out"
    export_refused(["export", str(out / "m.bin"), str(out / "m2.bin"), "--version", "0", "2", "--hf", src],
                   out, capsys, *needles)


def test_missing_config(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", str(tmp_path / "src")], tmp_path / "out", capsys,
                   "no config.json")
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", str(tmp_path / "nowhere")], tmp_path / "out",
                   capsys, "nowhere: no such directory")


def test_no_weights(checkpoints, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(os.path.join(checkpoints("mha_untied_safetensors_f32"), "config.json"), src)
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", str(src)], tmp_path / "out", capsys, "no weights")


def test_index_naming_a_missing_file(checkpoints, tmp_path, capsys):
    src = edited_copy(checkpoints("gqa_tied_safetensors_bf16_sharded"), tmp_path / "src")
    os.remove(os.path.join(src, "model-00002-of-00003.safetensors"))
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", src], tmp_path / "out", capsys,
                   "model.safetensors.index.json", "model-00002-of-00003.safetensors, which does not exist")


def test_shard_missing_from_index(checkpoints, tmp_path, capsys):
    src = edited_copy(checkpoints("gqa_tied_safetensors_bf16_sharded"), tmp_path / "src")
    index_path = os.path.join(src, "model.safetensors.index.json")
    index = json.load(open(index_path))
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != "model-00003-of-00003.safetensors"}
    json.dump(index, open(index_path, "w"))
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", src], tmp_path / "out", capsys,
                   "shard model-00003-of-00003.safetensors", "missing from the index")


def test_tensor_missing_from_bin_index(checkpoints, tmp_path, capsys):
    src = edited_copy(checkpoints("gqa_untied_bin_f32_sharded"), tmp_path / "src")
    index_path = os.path.join(src, "pytorch_model.bin.index.json")
    index = json.load(open(index_path))
    files = list(index["weight_map"].values())
    # a tensor sharing its shard with others, so the shard itself stays in the index
    name = next(k for k, f in index["weight_map"].items() if files.count(f) > 1)
    del index["weight_map"][name]
    json.dump(index, open(index_path, "w"))
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", src], tmp_path / "out", capsys,
                   f"tensor {name} is missing from the index")


def _rewrite_safetensors(src_dir: str, edit) -> None:
    path = os.path.join(src_dir, "model.safetensors")
    state = safetensors_torch.load_file(path)
    edit(state)
    safetensors_torch.save_file(state, path, metadata={"format": "pt"})


@pytest.mark.parametrize("case,edit,needles", [
    ("bias", lambda s: s.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}),
     ["unexpected bias model.layers.0.self_attn.q_proj.bias"]),
    ("extra", lambda s: s.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}),
     ["unexpected tensor model.layers.0.self_attn.q_norm.weight"]),
    ("missing", lambda s: s.pop("model.layers.1.mlp.down_proj.weight"), ["missing tensor model.layers.1.mlp.down_proj.weight"]),
    ("shape", lambda s: s.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(64, 32)}),
     ["model.layers.0.mlp.up_proj.weight has shape [64, 32]", "[96, 32]"]),
    ("int_dtype", lambda s: s.update({"model.norm.weight": torch.ones(32, dtype=torch.int32)}),
     ["model.norm.weight has dtype I32"]),
    ("nan", lambda s: s["model.layers.1.mlp.up_proj.weight"].__setitem__((3, 4), float("nan")),
     ["model.layers.1.mlp.up_proj.weight contains NaN"]),
])
def test_tensor_refusals(case, edit, needles, checkpoints, tmp_path, capsys):
    src = edited_copy(checkpoints("mha_untied_safetensors_f32"), tmp_path / "src")
    _rewrite_safetensors(src, edit)
    out = tmp_path / "out"
    export_refused(["export", str(out / "m.bin"), "--hf", src, "--quiet"], out, capsys, *needles)


def test_corrupt_safetensors(checkpoints, tmp_path, capsys):
    src = edited_copy(checkpoints("mha_untied_safetensors_f32"), tmp_path / "src")
    path = os.path.join(src, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", src], tmp_path / "out", capsys,
                   "model.safetensors", "truncated")
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", 1 << 40))
    export_refused(["export", str(tmp_path / "out" / "m.bin"), "--hf", src], tmp_path / "out", capsys,
                   "model.safetensors: not a safetensors file")


def test_refusal_through_the_real_process(checkpoints, tmp_path):
    """The installed entry point: one stderr line, exit 1, no traceback, nothing written."""
    src = edited_copy(checkpoints("mha_untied_safetensors_f32"), tmp_path / "src", {"attention_bias": True})
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "llama2bin", "export", str(out / "m.bin"), "--hf", src],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"llama2bin: error: {src}/config.json: attention_bias = True: "
                                                "the .bin formats have no biases"]
    assert not os.path.exists(out) or os.listdir(out) == []


# ---- memory -------------------------------------------------------------------------------

_PEAK_RSS_SCRIPT = r"""
import json, sys
from llama2bin.formats.source_registry import open_source
from llama2bin.formats.writer import export

def status_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

# ru_maxrss would include the parent's peak (Linux carries it across fork+exec); the VmHWM of
# this process image, reset after imports, measures the export alone.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
baseline = status_kb("VmRSS")
with open_source("hf", sys.argv[1]) as src:
    export(src, [(2, sys.argv[2])], quiet=True)
print(json.dumps({"baseline_kb": baseline, "peak_kb": status_kb("VmHWM")}))
"""


def test_export_memory_stays_near_a_tensor_not_the_model(tmp_path):
    """A 6-shard bf16 model of 704 MB as float32 (352 MB on disk; largest tensor 67 MB as float32)
    exports to v2 with a peak RSS increase below 60% of its on-disk size: holding the model, or
    whole shards, could not. (v2 only: v0's rope tables import torch, ~200 MB that is not the export's.)"""
    spec = Spec(dim=2048, n_layers=4, n_heads=16, n_kv_heads=4, vocab=8192, hidden=4096, max_pos=256)
    src = tmp_path / "big"
    src.mkdir()
    try:
        hf_config(spec).to_json_file(str(src / "config.json"))
        hd = spec.head_size
        shapes = {"model.embed_tokens.weight": (spec.vocab, spec.dim), "model.norm.weight": (spec.dim,),
                  "lm_head.weight": (spec.vocab, spec.dim)}
        for i in range(spec.n_layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (spec.dim,), p + "post_attention_layernorm.weight": (spec.dim,),
                p + "self_attn.q_proj.weight": (spec.dim, spec.dim), p + "self_attn.o_proj.weight": (spec.dim, spec.dim),
                p + "self_attn.k_proj.weight": (spec.n_kv_heads * hd, spec.dim),
                p + "self_attn.v_proj.weight": (spec.n_kv_heads * hd, spec.dim),
                p + "mlp.gate_proj.weight": (spec.hidden, spec.dim), p + "mlp.up_proj.weight": (spec.hidden, spec.dim),
                p + "mlp.down_proj.weight": (spec.dim, spec.hidden)})
        rng = np.random.default_rng(0)
        names, n_shards, weight_map = list(shapes), 6, {}
        for s in range(n_shards):
            file = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
            # Random bf16 bit patterns with the top exponent bit clear: finite, |x| < 2 (cheap to make).
            part = {k: torch.from_numpy(rng.integers(0, 1 << 16, size=shapes[k], dtype=np.uint16) & 0xBFFF)
                    .view(torch.bfloat16) for k in names[s::n_shards]}
            safetensors_torch.save_file(part, str(src / file), metadata={"format": "pt"})
            weight_map.update({k: file for k in part})
            del part
        (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        on_disk = sum(os.path.getsize(src / f) for f in set(weight_map.values()))
        largest_f32 = max(int(np.prod(s)) for s in shapes.values()) * 4

        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, str(src), str(tmp_path / "big.v2.bin")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        m = json.loads(proc.stdout)
        grown = (m["peak_kb"] - m["baseline_kb"]) * 1024
        assert grown < 0.6 * on_disk, f"peak RSS grew {grown / 1e6:.0f} MB for a {on_disk / 1e6:.0f} MB checkpoint"
        assert grown < 3.5 * largest_f32, f"peak RSS grew {grown / 1e6:.0f} MB; largest tensor {largest_f32 / 1e6:.0f} MB"
    finally:  # 0.7 GB of files: do not leave them in pytest's kept temp dirs
        shutil.rmtree(src, ignore_errors=True)
        if os.path.exists(tmp_path / "big.v2.bin"):
            os.remove(tmp_path / "big.v2.bin")
