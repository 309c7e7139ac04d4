"""Llama 3.x checkpoints read fully: rope_theta 500000, rope scaling (linear, llama3), tied
embeddings, an explicit head_dim, BOS/EOS lists - checked against transformers' own numbers.

- inv_freq: bit for bit against transformers' rope functions at Llama 3.1/3.2's parameters.
- Meta and Hugging Face agree: the same model read from params.json (use_scaled_rope) and from
  config.json (rope_scaling) gets the same RoPE, including Llama 3.2 1B/3B's factor 32.
- Two tiny models trained with transformers (tests/llama3_models.py): our reference forward, with
  the config's inv_freq, gives transformers' logits; without the scaling it clearly does not.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llama3_models import LLAMA3_SCALING, MODELS, meta_dir_from_hf, rotary_inv_freq, sample_tokens, train_hf  # noqa: E402
from llama3_models import transformers_logits as tf_logits  # noqa: E402
from llama_checkpoints import export_refused, run  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from llama2bin.checks.forward import logits  # noqa: E402
from llama2bin.checks.weights import SourceWeights  # noqa: E402
from llama2bin.formats.reader import BinFile  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.rope_freqs import LINEAR, LLAMA3, RopeScaling, inv_freq  # noqa: E402
from llama2bin.sources.hf import _check_config  # noqa: E402
from llama2bin.sources.meta import meta_rope_scaling  # noqa: E402

ATOL, RTOL = 1e-4, 1e-5
LLAMA_3_1 = RopeScaling(LLAMA3, 8.0, 1.0, 4.0, 8192)
LLAMA_3_2 = RopeScaling(LLAMA3, 32.0, 1.0, 4.0, 8192)


def transformers_inv_freq(theta: float, head_dim: int, scaling: RopeScaling | None) -> np.ndarray:
    rope = {"rope_type": "default", "rope_theta": theta} if scaling is None else {**scaling.to_json(), "rope_theta": theta}
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=131072,
                      rope_parameters=rope)
    if scaling is None:
        fn = LlamaRotaryEmbedding.compute_default_rope_parameters
    else:
        fn = ROPE_INIT_FUNCTIONS[scaling.rope_type]
    # the function the rotary module calls, and the buffer it keeps, are the same numbers
    buffer = LlamaRotaryEmbedding(cfg).inv_freq.numpy()
    computed = fn(cfg)[0].numpy()
    assert np.array_equal(buffer.view(np.uint32), computed.view(np.uint32))
    return computed


@pytest.mark.parametrize("theta,head_dim,scaling", [
    (500000.0, 64, LLAMA_3_2), (500000.0, 128, LLAMA_3_2),  # Llama 3.2 1B (64), 3B (128)
    (500000.0, 64, LLAMA_3_1), (500000.0, 128, LLAMA_3_1),  # Llama 3.1 8B/70B/405B (128)
    (500000.0, 64, None), (500000.0, 128, None),  # Llama 3 8B/70B
    (500000.0, 128, RopeScaling(LINEAR, 4.0)), (10000.0, 64, RopeScaling(LINEAR, 2.0)),
    (10000.0, 48, None), (10000.0, 64, None), (10000.0, 128, None),  # stories15M, 42M/110M, Llama 2
])
def test_inv_freq_is_transformers_bit_for_bit(theta, head_dim, scaling):
    ours = inv_freq(theta, head_dim, scaling)
    assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
    assert np.array_equal(ours.view(np.uint32), transformers_inv_freq(theta, head_dim, scaling).view(np.uint32))


def test_llama3_scaling_keeps_divides_and_interpolates():
    """The three bands are all there at Llama 3.2's parameters (so the test above covers each)."""
    base, scaled = inv_freq(500000.0, 64), inv_freq(500000.0, 64, LLAMA_3_2)
    wavelen = 2 * np.pi / base.astype(np.float64)
    kept, divided = wavelen < 8192 / 4, wavelen > 8192 / 1
    assert kept.sum() and divided.sum() and (~kept & ~divided).sum()
    assert np.array_equal(scaled[kept], base[kept])
    assert np.array_equal(scaled[divided], base[divided] / np.float32(32))


# ---- Meta params.json and Hugging Face config.json of the same model ------------------------

# The published configs of Llama 3.2 1B and 3B and Llama 3.1 8B (architecture fields only).
HF_CONFIGS = {
    "Llama-3.2-1B": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, factor=32.0),
    "Llama-3.2-3B": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                         head_dim=128, factor=32.0),
    "Llama-3.1-8B": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, factor=8.0),
}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_meta_and_hf_configs_of_one_model_get_the_same_rope(name):
    c = HF_CONFIGS[name]
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "vocab_size": 128256,
          "max_position_embeddings": 131072, "rope_theta": 500000.0, "tie_word_embeddings": c["head_dim"] == 64,
          "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
          "rope_scaling": {"factor": c["factor"], "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"},
          **{k: v for k, v in c.items() if k != "factor"}}
    theta, departures, hf_scaling = _check_config(hf, "config.json", allow_rope_theta=True)
    meta_scaling = meta_rope_scaling(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                                     c["num_key_value_heads"], 128256)
    assert theta == 500000.0 and hf_scaling == meta_scaling and hf_scaling.factor == c["factor"]
    assert departures == ("rope_theta=500000.0", meta_scaling.departure())
    assert meta_scaling.departure().startswith(f"rope_scaling=llama3(factor={c['factor']:g},")


def _tiny_scaled_pair(tmp_path, scaling: dict) -> tuple[str, str]:
    """One random tiny model as an HF directory (config rope_scaling = `scaling`) and as a Meta
    directory (params.json use_scaled_rope: true)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = {**MODELS["llama3_shaped"], "rope_parameters": {**scaling, "rope_theta": 500000.0},
           "max_position_embeddings": 16384}
    hf_dir = str(tmp_path / "hf")
    LlamaForCausalLM(LlamaConfig(**cfg)).eval().save_pretrained(hf_dir)
    params = {"_model": "llama3_shaped", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 64,
              "multiple_of": 32, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True}
    return hf_dir, meta_dir_from_hf(hf_dir, str(tmp_path / "meta"), params)


def test_meta_use_scaled_rope_reads_as_the_hf_model_with_meta_constants(tmp_path):
    """Meta's apply_scaling constants (factor 8, 1, 4, 8192) = the same model's HF rope_scaling:
    equal configs and equal reference logits at positions past where the bands differ."""
    hf_dir, meta_dir = _tiny_scaled_pair(tmp_path, LLAMA_3_1.to_json())
    tokens = list(range(1, 60)) * 2  # 118 positions
    with open_source("hf", hf_dir, allow_rope_theta=True, max_seq_len=128) as hf, \
            open_source("meta", meta_dir, allow_rope_theta=True, max_seq_len=128) as meta:
        assert meta.config.rope_scaling == hf.config.rope_scaling == LLAMA_3_1
        assert meta.config.accepted_departures == hf.config.accepted_departures
        assert hf.config.bos_id == 1 and hf.config.eos_ids == (2, 4) and meta.config.bos_id is None
        ours_meta = logits(SourceWeights(meta), meta.config, tokens)
        ours_hf = logits(SourceWeights(hf), hf.config, tokens)
    np.testing.assert_allclose(ours_meta, ours_hf, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(ours_hf, tf_logits(hf_dir, tokens), atol=ATOL, rtol=RTOL)


def test_meta_use_scaled_rope_is_refused_for_the_bin_formats_without_consent(tmp_path, capsys):
    _, meta_dir = _tiny_scaled_pair(tmp_path, LLAMA_3_1.to_json())
    out = tmp_path / "out"
    export_refused(["export", str(out / "m.bin"), "--version", "0", "--meta-llama", meta_dir], out, capsys,
                   "params.json: rope_theta = 500000 and use_scaled_rope is llama3 (factor 8, ", "--allow-rope-theta")


# ---- trained models: reference forward against transformers ---------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama3_trained")
    return {name: train_hf(name, str(root / name)) for name in MODELS}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_reference_forward_gives_transformers_logits(trained, name):
    path = trained[name]
    tokens = sample_tokens()
    with open_source("hf", path, allow_rope_theta=True) as src:
        cfg = src.config
        assert cfg.rope_theta == 500000.0 and cfg.shared_classifier and cfg.n_kv_heads == 2 and cfg.head_size == 16
        assert cfg.bos_id == 1 and cfg.eos_ids == (2, 4)
        assert np.array_equal(cfg.inv_freq().view(np.uint32), rotary_inv_freq(path).view(np.uint32))
        ours = logits(SourceWeights(src), cfg, tokens)
        want = tf_logits(path, tokens)
        np.testing.assert_allclose(ours, want, atol=ATOL, rtol=RTOL)
        assert (want.argmax(-1)[:-1] == np.array(tokens[1:])).mean() > 0.5  # trained: it predicts the grammar
        if name == "rope_scaled":
            assert cfg.rope_scaling == RopeScaling(LLAMA3, **{k: v for k, v in LLAMA3_SCALING.items() if k != "rope_type"})
            unscaled = logits(SourceWeights(src), dataclasses.replace(cfg, rope_scaling=None), tokens)
            assert np.abs(unscaled - want).max() > 100 * ATOL  # the scaling matters at these positions


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_plain_version_0_still_refuses_both_models(trained, name, tmp_path, capsys):
    out = tmp_path / "out"
    needles = ["rope_parameters.rope_theta = 500000", "--allow-rope-theta"]
    if name == "rope_scaled":
        needles.append("rope_parameters is llama3 (factor 8, low_freq_factor 1, high_freq_factor 4, "
                       "original_max_position_embeddings 48)")
    export_refused(["export", str(out / "m.bin"), "--version", "0", "--hf", trained[name]], out, capsys, *needles)


@pytest.mark.slow
def test_scaled_model_exports_with_consent_and_verifies(trained, tmp_path, capsys):
    """--allow-rope-theta: v0 (tables = transformers' cos/sin of the scaled inv_freq), v2 and an hf
    directory that transformers loads with the same scaling; verify passes, the departure is recorded."""
    path = trained["rope_scaled"]
    out = tmp_path / "out"
    files = [str(out / "m.v0.bin"), str(out / "m.v2.bin"), str(out / "hf")]
    rc, _, err = run(["export", *files, "--version", "0", "2", "hf", "--hf", path, "--allow-rope-theta", "--quiet"], capsys)
    assert rc == 0, err
    rc, stdout, err = run(["verify", *files, "--hf", path, "--allow-rope-theta", "--json",
                           *(str(out / f"{n}.json") for n in ("v0", "v2", "hf"))], capsys)
    assert rc == 0, stdout + err
    v0 = json.load(open(out / "v0.json"))
    assert v0["source"]["config"]["rope_scaling"] == LLAMA3_SCALING
    assert v0["source"]["config"]["accepted_departures"] == [
        "rope_theta=500000.0", "rope_scaling=llama3(factor=8,low_freq_factor=1,high_freq_factor=4,"
        "original_max_position_embeddings=48)"]
    assert v0["rope_tables"]["scaling"] == LLAMA3_SCALING and not v0["rope_tables"]["all_readers_agree"]
    with BinFile(files[0]) as bf:
        cos = bf.tensors["freqs_cos"].read_all().reshape(64, 8)
    angles = torch.outer(torch.arange(64).float(), torch.from_numpy(rotary_inv_freq(path)))
    assert np.array_equal(cos.view(np.uint32), torch.cos(angles).numpy().view(np.uint32))
    tokens = sample_tokens()
    np.testing.assert_allclose(tf_logits(files[2], tokens), tf_logits(path, tokens), atol=ATOL, rtol=RTOL)
    with open(os.path.join(files[2], "config.json")) as f:
        hf_cfg = json.load(f)
    assert hf_cfg["rope_parameters"] == {**LLAMA3_SCALING, "rope_theta": 500000.0}
    assert hf_cfg["bos_token_id"] == 1 and hf_cfg["eos_token_id"] == [2, 4]


def test_sampled_evaluation_starts_with_the_sources_bos(tmp_path):
    """Sampled evaluation tokens start from the BOS the config declares (Llama 3: 128000), not 1."""
    from transformers import LlamaForCausalLM

    from llama2bin.checks.eval_tokens import sampled_tokens

    torch.manual_seed(0)
    path = str(tmp_path / "hf")
    LlamaForCausalLM(LlamaConfig(**{**MODELS["llama3_shaped"], "bos_token_id": 7})).eval().save_pretrained(path)
    with open_source("hf", path, allow_rope_theta=True) as src:
        ev = sampled_tokens(src, seqs=2, length=4)
    assert [s[0] for s in ev.sequences] == [7, 7] and ev.recipe["bos"] == 7
