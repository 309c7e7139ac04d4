"""The llama GGUF plan (formats/gguf_plan.py): tensor types, rope scaling, hyper-parameter keys.

References: the converter's formulas as they stand in LlamaModel/TextModel (torch for
rope_freqs, exactly its expression), gguf.utility.size_label, and the converter's golden files.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from gguf.utility import size_label as gguf_size_label

from llama2bin.formats.gguf_plan import GGUF_FILE_TYPES, metadata_kvs, size_label, tensor_plan, tensor_type
from llama2bin.formats.gguf_write import GgufModelInfo, gguf_layout
from llama2bin.model import ModelConfig
from llama2bin.rope_freqs import RopeScaling
from llama2bin.sources.gguf_file import ROPE_FREQS, FileType, GgmlType, llama3_rope_factors

STORIES260K = ModelConfig(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, max_seq_len=512,
                          shared_classifier=True)
LLAMA32_1B = ModelConfig(dim=2048, hidden_dim=8192, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                         max_seq_len=131072, shared_classifier=True, rope_theta=500000.0)


def converter_rope_factors(head_dim: int, base: float, factor: float, low: float, high: float, old: int) -> np.ndarray:
    """LlamaModel.generate_extra_tensors, verbatim (torch float32)."""
    torch = pytest.importorskip("torch")
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    low_freq_wavelen, high_freq_wavelen = old / low, old / high
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32).numpy()


@pytest.mark.parametrize(("head_dim", "factor"), [(64, 32.0), (128, 32.0), (128, 8.0)])  # Llama 3.2 1B, 3B; 3.1 8B
def test_llama3_rope_factors_equal_the_converters(head_dim: int, factor: float) -> None:
    scaling = RopeScaling("llama3", factor, 1.0, 4.0, 8192)
    ours = llama3_rope_factors(head_dim, 500000.0, scaling)
    assert ours.dtype == np.float32 and ours.shape == (head_dim // 2,)
    assert ours.tobytes() == converter_rope_factors(head_dim, 500000.0, factor, 1.0, 4.0, 8192).tobytes()
    assert ours[0] == 1 and ours[-1] == factor and ((ours > 1) & (ours < factor)).any()  # all three bands


def test_llama3_rope_factors_equal_the_converters_at_every_setting() -> None:
    """torch's powf (not correctly rounded) and its reciprocal-then-product divisions, reproduced:
    bit for bit over head sizes, bases, factors and bands (2400 settings in development)."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        hd = int(rng.choice([32, 48, 64, 80, 96, 128, 160, 256]))
        base, factor = float(rng.choice([10000.0, 500000.0, 1e6, 123456.0])), float(rng.choice([2.0, 8.0, 32.0, 3.3]))
        low, high = [(1.0, 4.0), (0.5, 3.0), (1.0, 2.5)][int(rng.integers(3))]
        old = int(rng.choice([2048, 3000, 8192, 16384]))
        ours = llama3_rope_factors(hd, base, RopeScaling("llama3", factor, low, high, old))
        assert ours.tobytes() == converter_rope_factors(hd, base, factor, low, high, old).tobytes(), (hd, base, factor, low, high)


def test_llama3_scaling_adds_an_f32_rope_freqs_tensor_first() -> None:
    scaling = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
    plan = tensor_plan(dataclasses.replace(LLAMA32_1B, rope_scaling=scaling), FileType.MOSTLY_Q8_0)
    assert plan[0].gguf_name == ROPE_FREQS and plan[0].canonical is None
    assert plan[0].info.ne == (32,) and plan[0].info.ggml_type == GgmlType.F32
    small = ModelConfig(dim=64, hidden_dim=128, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=32, max_seq_len=16,
                        shared_classifier=True, rope_scaling=scaling)
    layout = gguf_layout("gguf-q8_0", small, GgufModelInfo("m"))
    assert layout.sections[0].tensor == ROPE_FREQS and layout.generated[ROPE_FREQS].shape == (8,)
    keys = [kv.key for kv in layout.kvs]
    assert "llama.rope.scaling.type" not in keys  # llama3 scaling is the tensor alone, as the converter writes it


def test_linear_scaling_writes_type_and_factor_before_freq_base() -> None:
    linear = dataclasses.replace(STORIES260K, rope_scaling=RopeScaling("linear", 4.0))
    kvs = metadata_kvs(linear, FileType.ALL_F32, "m", 1000)
    keys = [kv.key for kv in kvs]
    i = keys.index("llama.rope.scaling.type")
    assert keys[i : i + 3] == ["llama.rope.scaling.type", "llama.rope.scaling.factor", "llama.rope.freq_base"]
    assert kvs[i].value == "linear" and kvs[i + 1].value == 4.0
    assert not any(p.gguf_name == ROPE_FREQS for p in tensor_plan(linear, FileType.ALL_F32))


def test_types_per_file_type_and_the_q8_0_fallback() -> None:
    """stories260K: hidden_dim 172 rows (ffn_down) are not whole Q8_0 blocks -> F16, like the converter."""
    plan = {p.gguf_name: p.info for p in tensor_plan(STORIES260K, FileType.MOSTLY_Q8_0)}
    assert plan["blk.0.ffn_down.weight"].ggml_type == GgmlType.F16 and plan["blk.0.ffn_down.weight"].ne == (172, 64)
    assert plan["blk.0.ffn_gate.weight"].ggml_type == GgmlType.Q8_0 and plan["blk.0.ffn_gate.weight"].ne == (64, 172)
    assert plan["blk.4.attn_k.weight"].ne == (64, 32)  # 4 kv heads x 8
    assert plan["output_norm.weight"].ggml_type == GgmlType.F32 and "output.weight" not in plan  # shared
    for file_type, matrix in ((FileType.ALL_F32, GgmlType.F32), (FileType.MOSTLY_F16, GgmlType.F16),
                              (FileType.MOSTLY_BF16, GgmlType.BF16)):
        assert tensor_type(file_type, (172, 64)) == matrix and tensor_type(file_type, (64,)) == GgmlType.F32
    names = [p.gguf_name for p in tensor_plan(STORIES260K, FileType.ALL_F32)]
    assert names[:3] == ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight"]
    assert names[-1] == "output_norm.weight" and len(names) == 1 + 9 * 5 + 1


def test_hyper_parameter_keys_and_types() -> None:
    kvs = {kv.key: kv for kv in metadata_kvs(LLAMA32_1B, FileType.MOSTLY_BF16, "Llama-3.2-1B", 1_235_814_400)}
    expect = {"llama.block_count": 16, "llama.context_length": 131072, "llama.embedding_length": 2048,
              "llama.feed_forward_length": 8192, "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
              "llama.rope.freq_base": 500000.0, "llama.attention.key_length": 64, "llama.attention.value_length": 64,
              "general.file_type": 32, "llama.vocab_size": 128256, "llama.rope.dimension_count": 64,
              "general.quantization_version": 2, "general.size_label": "1.2B", "general.name": "Llama-3.2-1B"}
    assert {k: kvs[k].value for k in expect} == expect
    assert kvs["llama.attention.layer_norm_rms_epsilon"].value == 1e-5
    assert [kv.key for kv in metadata_kvs(LLAMA32_1B, FileType.ALL_F32, "", 1)][2] == "general.size_label"  # no empty name


def test_size_label_equals_gguf() -> None:
    rng = np.random.default_rng(0)
    for n in [1, 999, 1000, 95_456, 10**6, 10**6 + 1, 1_100_048_384, 7 * 10**9, 70_553_706_496, 10**12 + 1,
              *rng.integers(0, 10**13, 500).tolist()]:
        assert size_label(int(n)) == gguf_size_label(int(n), int(n), 0, 0)


def test_format_names() -> None:
    assert {k: int(v) for k, v in GGUF_FILE_TYPES.items()} == {"gguf-f32": 0, "gguf-f16": 1, "gguf-bf16": 32, "gguf-q8_0": 7}
