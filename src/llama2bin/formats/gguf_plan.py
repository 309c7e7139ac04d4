"""What a llama GGUF holds for one of our models: tensor names, shapes, types, and metadata.

The reference is llama.cpp's `convert_hf_to_gguf.py` (LlamaModel + TextModel + ModelBase in
conversion/, as vendored by llama-cpp-python 0.3.36) for the same Hugging Face config:

Tensors (`tensor_plan`):
- names: token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
  ffn_down, ffn_up}, output_norm, output (absent when the classifier is the embedding: llama.cpp
  then uses token_embd), all with `.weight`; `rope_freqs.weight` first for Llama 3 rope scaling.
- shapes: ne = numpy shape reversed ([cols, rows]; 1-D tensors [n]).
- types: 1-D tensors (norms, rope_freqs) are always F32; every matrix takes the file type's
  type, except that Q8_0 needs rows of whole 32-value blocks: a matrix whose row length is not a
  multiple of 32 falls back to F16 (the converter catches gguf's QuantError and writes F16).
- Q and K rows in Meta's interleaved rotary order (our canonical order; the converter undoes
  HF's permutation, K with n_kv_heads, as sources/hf.py does).

Order: rope_freqs, token_embd, then layer by layer (attn_norm, attn_q, attn_k, attn_v,
attn_output, ffn_norm, ffn_gate, ffn_down, ffn_up), output_norm, output. The converter writes
tensors in the order of the safetensors header (alphabetical HF names: lm_head first, layer 10
before layer 2); tensor order changes no value, and the layer-by-layer order keeps each layer's
bytes together for mmap readers. Parity with the converter is therefore tensor for tensor (name,
ne, type, bytes), not offset for offset.

Metadata (`metadata_kvs`), in the converter's order (general.*, llama.* as TextModel and
LlamaModel add them, general.quantization_version, tokenizer.*):
general.architecture "llama", general.type "model", general.name, general.size_label (the
converter's rounding of the parameter count), llama.block_count, context_length,
embedding_length, feed_forward_length, attention.head_count, attention.head_count_kv,
[rope.scaling.type "linear", rope.scaling.factor], rope.freq_base,
attention.layer_norm_rms_epsilon, attention.key_length, attention.value_length,
general.file_type, llama.vocab_size, llama.rope.dimension_count, general.quantization_version.
Decisions where the converter depends on what a config.json happens to spell out: it writes
head_count_kv, rope.freq_base and key/value_length only when config.json has
num_key_value_heads, rope_theta and head_dim; we always write them (the values are the model's
either way; transformers >= 5 always saves all three, so for its checkpoints the key sets are
equal). general.name is the caller's model name (the converter derives one from the directory
name and model card); the converter's other model-card keys (basename, finetune, license, tags,
base models) are not written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import LAYER_TENSORS, ModelConfig, layer_name
from ..rope_freqs import LINEAR, LLAMA3
from ..sources.gguf_file import (
    QUANTIZATION_VERSION,
    ROPE_FREQS,
    FileType,
    GgmlType,
    ValueType,
    gguf_tensor_name,
)
from .gguf_header import KV, TensorInfo

ARCH = "llama"

# registered format name -> general.file_type, and the type its matrices take
GGUF_FILE_TYPES: dict[str, FileType] = {
    "gguf-f32": FileType.ALL_F32,
    "gguf-f16": FileType.MOSTLY_F16,
    "gguf-bf16": FileType.MOSTLY_BF16,
    "gguf-q8_0": FileType.MOSTLY_Q8_0,
}
MATRIX_TYPE: dict[FileType, GgmlType] = {
    FileType.ALL_F32: GgmlType.F32,
    FileType.MOSTLY_F16: GgmlType.F16,
    FileType.MOSTLY_BF16: GgmlType.BF16,
    FileType.MOSTLY_Q8_0: GgmlType.Q8_0,
}


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    canonical: str | None  # None: a generated tensor (rope_freqs)
    info: TensorInfo

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (rows, cols)."""
        return tuple(reversed(self.info.ne))


def tensor_type(file_type: FileType, shape: tuple[int, ...]) -> GgmlType:
    """The converter's choice for a weight of numpy `shape` in a file of `file_type`."""
    if len(shape) <= 1:
        return GgmlType.F32  # "Most of the codebase that takes in 1D tensors or norms only handles F32"
    wanted = MATRIX_TYPE[file_type]
    if wanted == GgmlType.Q8_0 and shape[-1] % 32:
        return GgmlType.F16  # gguf.QuantError -> "falling back to F16"
    return wanted


def canonical_order(cfg: ModelConfig) -> list[str]:
    """token_embd, each layer's tensors together, output_norm, output (when not shared)."""
    names = ["tok_embeddings"]
    for i in range(cfg.n_layers):
        names += [layer_name(i, kind) for kind in LAYER_TENSORS]
    return names + ["norm"] + ([] if cfg.shared_classifier else ["output"])


def tensor_plan(cfg: ModelConfig, file_type: FileType) -> list[PlannedTensor]:
    shapes = cfg.shapes()
    plan = []
    if cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == LLAMA3:
        plan.append(PlannedTensor(ROPE_FREQS, None, TensorInfo(ROPE_FREQS, (cfg.head_size // 2,), GgmlType.F32)))
    for name in canonical_order(cfg):
        shape = shapes[name]
        plan.append(PlannedTensor(gguf_tensor_name(name), name,
                                  TensorInfo(gguf_tensor_name(name), tuple(reversed(shape)), tensor_type(file_type, shape))))
    return plan


def size_label(n_params: int) -> str:
    """gguf.utility.size_label for a dense model: "125K", "1.1B", "7.0B"."""
    if n_params > 1e12:
        scaled, suffix = n_params * 1e-12, "T"
    elif n_params > 1e9:
        scaled, suffix = n_params * 1e-9, "B"
    elif n_params > 1e6:
        scaled, suffix = n_params * 1e-6, "M"
    else:
        scaled, suffix = n_params * 1e-3, "K"
    fix = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{fix}f}{suffix}"


def _u32(key: str, value: int) -> KV:
    return KV(key, ValueType.UINT32, int(value))


def _f32(key: str, value: float) -> KV:
    return KV(key, ValueType.FLOAT32, float(value))


def metadata_kvs(cfg: ModelConfig, file_type: FileType, name: str, n_params: int) -> list[KV]:
    """general.* and llama.* keys in the converter's order (tokenizer keys follow: gguf_vocab)."""
    a = f"{ARCH}."
    kvs = [KV("general.architecture", ValueType.STRING, ARCH), KV("general.type", ValueType.STRING, "model")]
    if name:  # GGUFWriter.add_string drops empty strings
        kvs.append(KV("general.name", ValueType.STRING, name))
    kvs += [
        KV("general.size_label", ValueType.STRING, size_label(n_params)),
        _u32(a + "block_count", cfg.n_layers),
        _u32(a + "context_length", cfg.max_seq_len),
        _u32(a + "embedding_length", cfg.dim),
        _u32(a + "feed_forward_length", cfg.hidden_dim),
        _u32(a + "attention.head_count", cfg.n_heads),
        _u32(a + "attention.head_count_kv", cfg.n_kv_heads),
    ]
    if cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == LINEAR:
        kvs += [KV(a + "rope.scaling.type", ValueType.STRING, "linear"), _f32(a + "rope.scaling.factor", cfg.rope_scaling.factor)]
    kvs += [
        _f32(a + "rope.freq_base", cfg.rope_theta),
        _f32(a + "attention.layer_norm_rms_epsilon", cfg.norm_eps),
        _u32(a + "attention.key_length", cfg.head_size),
        _u32(a + "attention.value_length", cfg.head_size),
        _u32("general.file_type", file_type),
        _u32(a + "vocab_size", cfg.vocab_size),
        _u32(a + "rope.dimension_count", cfg.head_size),
        _u32("general.quantization_version", QUANTIZATION_VERSION),
    ]
    return kvs
