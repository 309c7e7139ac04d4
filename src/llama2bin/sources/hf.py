"""Hugging Face Llama directories: config.json plus safetensors or pytorch_model*.bin weights.

Weights are found the way transformers looks for them (safetensors first): model.safetensors,
model.safetensors.index.json (+ shards), pytorch_model.bin, pytorch_model.bin.index.json
(+ shards). Every tensor is opened lazily at its byte offset (our own safetensors header
parser; TorchZip for .bin), so nothing is read until rows are asked for. No code from the
directory is ever run: transformers is not even imported, so `trust_remote_code` cannot apply.

HF stores q_proj/k_proj with each head's rows permuted for "rotate halves" RoPE; `HfRotaryRef`
undoes that per head (with n_heads for q, n_kv_heads for k) while reading.

Llama 3.x configs are read fully: rope_theta and rope scaling of type linear or llama3 (in either
spelling, transformers 4's rope_scaling or 5's rope_parameters), tied embeddings, an explicit
head_dim, bos_token_id and eos_token_id (one id or a list).

What the .bin formats cannot express is refused with the config field or tensor named:
other architectures, biases, other rope types (yarn, dynamic, ...), a rotary base other than
10000 or any rope scaling (unless allow_rope_theta), a head_dim that is not hidden_size /
num_attention_heads, activations other than SiLU, a tied config with a different lm_head.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ..constants import DEFAULT_MAX_SEQ_LEN
from ..errors import Llama2binError
from ..model import ModelConfig, canonical_name, hf_name
from ..rope_freqs import RopeScaling
from .base import FilePool, RawTensor, Source, TensorEncoding, TensorRef, check_tensors, tensors_equal, thread_buffer
from .policy import (
    bool_field,
    int_field,
    load_json_object,
    optional_int_field,
    positive_float_field,
    require_dir,
    rope_departures,
)
from .rope_config import rope_settings
from .safetensors import SafetensorsFile
from .torchzip import TorchTensor, TorchZip

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# A buffer older transformers versions saved with the weights; recomputed, not a weight.
_INV_FREQ_RE = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


class HfRotaryRef(TensorRef):
    """HF q_proj/k_proj read back in the interleaved (llama2.c/Meta) rotary layout.

    Canonical = w.reshape(n, 2, hd // 2, dim).transpose(1, 2).reshape(n * hd, dim): within each
    head, canonical row 2j + s is HF row s * hd/2 + j. A row range is served by one contiguous
    read of the heads it spans, permuted in memory.
    """

    def __init__(self, src: TensorRef, head_size: int):
        self.src = src
        self.name = src.name
        self.shape = src.shape
        self.encoding = src.encoding  # the permutation moves rows, the values stay as stored
        self.head_size = head_size

    def _heads(self, start: int, stop: int) -> tuple[int, int]:
        """The stored rows of the heads that canonical rows [start, stop) fall in: [first, end)."""
        hd = self.head_size
        return start // hd * hd, -(-stop // hd) * hd

    def _canonical(self, block: np.ndarray, first: int, start: int, stop: int) -> np.ndarray:
        """Canonical rows [start, stop), a view of `block`: the stored rows of whole heads from `first`."""
        hd, cols = self.head_size, self.cols
        heads = block.size // (hd * cols)
        canonical = block.reshape(heads, 2, hd // 2, cols).transpose(0, 2, 1, 3).reshape(heads * hd, cols)
        return canonical[start - first : stop - first]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        first, end = self._heads(start, stop)
        return np.ascontiguousarray(self._canonical(self.src.read_rows(first, end), first, start, stop))

    def read_rows_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """read_rows, the heads read into this thread's buffer and permuted into `out`."""
        first, end = self._heads(start, stop)
        block = self.src.read_rows_into(first, end, thread_buffer("heads_f32", (end - first) * self.cols, np.float32))
        dst = out[: (stop - start) * self.cols].reshape(stop - start, self.cols)
        np.copyto(dst, self._canonical(block.reshape(-1), first, start, stop))
        return dst

    def read_bf16_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray | None:
        """The heads' stored bf16 rows, permuted into `out` as 2-byte values (half the bytes the
        float32 permute of read_rows moves)."""
        if self.src.encoding != TensorEncoding.BF16:
            return None
        first, end = self._heads(start, stop)
        block = self.src.read_bf16_into(first, end, thread_buffer("heads", (end - first) * self.cols, np.uint16))
        assert block is not None
        dst = out[: (stop - start) * self.cols]
        np.copyto(dst.reshape(stop - start, self.cols), self._canonical(block, first, start, stop))
        return dst


def _field(cfg: dict[str, Any], path: str, name: str) -> Any:
    if cfg.get(name) is None:
        raise Llama2binError(f"{path}: no {name}")
    return cfg[name]


def _check_config(cfg: dict[str, Any], path: str,
                  allow_rope_theta: bool) -> tuple[float, tuple[str, ...], RopeScaling | None]:
    """Refuse every config.json setting the formats cannot express; returns (rope_theta, departures, scaling)."""
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in _ARCHITECTURES:
        raise Llama2binError(f"{path}: model_type {model_type!r} is not supported (llama, or mistral without sliding window)")
    if model_type == "mistral" and cfg.get("sliding_window", 4096) is not None:
        # MistralConfig's default is 4096 when the key is absent.
        raise Llama2binError(
            f"{path}: sliding_window = {cfg.get('sliding_window', 4096)!r}: sliding-window attention cannot be expressed"
        )
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or _ARCHITECTURES[model_type] not in archs):
        raise Llama2binError(f"{path}: architectures {archs!r} does not include {_ARCHITECTURES[model_type]}")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag) is not None and bool_field(path, flag, cfg[flag]):
            raise Llama2binError(f"{path}: {flag} = {cfg[flag]!r}: the .bin formats have no biases")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise Llama2binError(f"{path}: hidden_act = {act!r}: llama2.c's feed-forward is SwiGLU (silu)")
    if cfg.get("quantization_config") is not None:
        raise Llama2binError(f"{path}: quantization_config is set: pre-quantized checkpoints are not read")
    partial = cfg.get("partial_rotary_factor")
    if partial not in (None, 1, 1.0):
        raise Llama2binError(f"{path}: partial_rotary_factor = {partial!r}: llama2.c rotates whole heads")

    dim = int_field(path, "hidden_size", _field(cfg, path, "hidden_size"))
    n_heads = int_field(path, "num_attention_heads", _field(cfg, path, "num_attention_heads"))
    head_dim = optional_int_field(path, "head_dim", cfg.get("head_dim"))
    if head_dim is not None and (n_heads <= 0 or head_dim * n_heads != dim):
        derived = f" = {dim / n_heads:g}" if n_heads > 0 else ""
        raise Llama2binError(
            f"{path}: head_dim = {head_dim!r} but hidden_size / num_attention_heads = {dim}/{n_heads}{derived}: "
            "no llama2.c format stores a head size (readers derive it as dim / n_heads), so this model cannot be expressed"
        )

    theta, theta_field, scaling, scaling_field = rope_settings(cfg, path)
    return rope_departures(path, theta_field, theta, scaling, scaling_field, allow_rope_theta) + (scaling,)


def _eos_ids(path: str, value: Any) -> tuple[int, ...]:
    """eos_token_id: null, one id, or a list of ids (Llama 3.1/3.2 instruct: [128001, 128008, 128009])."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if len(values) > 64:
        raise Llama2binError(f"{path}: eos_token_id lists {len(values)} ids; no model has that many")
    return tuple(int_field(path, "eos_token_id", v) for v in values)


class HfSource(Source):
    kind = "hf"

    def __init__(self, path: str, max_seq_len: int | None = None, allow_rope_theta: bool = False):
        self.path = path
        require_dir(path, "Hugging Face")
        config_path = os.path.join(path, CONFIG_FILE)
        if not os.path.exists(config_path):
            raise Llama2binError(f"{path}: no {CONFIG_FILE} (not a Hugging Face model directory)")
        cfg = load_json_object(config_path, "Hugging Face config")
        theta, departures, scaling = _check_config(cfg, config_path, allow_rope_theta)
        self._pool = FilePool()
        try:
            raw, self._weights_desc = self._find_weights(path)
            self.stored: dict[str, RawTensor] = raw  # by Hugging Face key, as the files store them
            self._open(path, config_path, cfg, raw, (theta, scaling, departures), max_seq_len)
        except BaseException:
            self._pool.close()
            raise
        # tokenizer.model (sentencepiece: Llama 1/2) first, as the pipeline has always taken it;
        # else tokenizer.json (Llama 3's only tokenizer at the top of an HF directory).
        found = [os.path.join(path, f) for f in TOKENIZER_FILES if os.path.isfile(os.path.join(path, f))]
        self.tokenizer_path = found[0] if found else None

    # ---- weights ----------------------------------------------------------------------

    def _find_weights(self, path: str) -> tuple[dict[str, RawTensor], dict[str, Any]]:
        """HF name -> lazy raw tensor, from whichever weight files the directory has."""
        # lexists, not isfile: a weight file that is a FIFO, a device or a dangling link is opened
        # (and refused by name by safe_io) rather than skipped as if it were absent.
        has = {f: os.path.lexists(os.path.join(path, f)) for f in (SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE, BIN_INDEX)}
        if has[SAFETENSORS_FILE] and has[SAFETENSORS_INDEX]:
            raise Llama2binError(f"{path}: both {SAFETENSORS_FILE} and {SAFETENSORS_INDEX}: which weights are meant?")
        if has[BIN_FILE] and has[BIN_INDEX]:
            raise Llama2binError(f"{path}: both {BIN_FILE} and {BIN_INDEX}: which weights are meant?")
        if has[SAFETENSORS_FILE]:
            return self._safetensors_files(path, None, [SAFETENSORS_FILE]), {"format": "safetensors", "files": 1}
        if has[SAFETENSORS_INDEX]:
            weight_map = self._index(path, SAFETENSORS_INDEX, r"model-\d+-of-\d+\.safetensors")
            files = sorted(set(weight_map.values()))
            return self._safetensors_files(path, weight_map, files), {"format": "safetensors", "files": len(files)}
        if has[BIN_FILE]:
            return self._bin_files(path, None, [BIN_FILE]), {"format": "pytorch_bin", "files": 1}
        if has[BIN_INDEX]:
            weight_map = self._index(path, BIN_INDEX, r"pytorch_model-\d+-of-\d+\.bin")
            files = sorted(set(weight_map.values()))
            return self._bin_files(path, weight_map, files), {"format": "pytorch_bin", "files": len(files)}
        if any(f.endswith(".safetensors") or f.endswith(".bin") for f in os.listdir(path)):
            raise Llama2binError(
                f"{path}: weight files without {SAFETENSORS_INDEX} or {BIN_INDEX}: cannot tell which tensors they hold"
            )
        raise Llama2binError(f"{path}: no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} or {BIN_INDEX})")

    def _index(self, path: str, index_name: str, shard_pattern: str) -> dict[str, str]:
        """The index's weight_map, checked: plain file names that exist, and no shard left out."""
        index_path = os.path.join(path, index_name)
        index = load_json_object(index_path, "shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise Llama2binError(f"{index_path}: no weight_map")
        for name, file in weight_map.items():
            if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", ".."):
                raise Llama2binError(f"{index_path}: tensor {name} maps to {file!r}, not a file in the directory")
            if not os.path.lexists(os.path.join(path, file)):
                raise Llama2binError(f"{index_path}: tensor {name} is in {file}, which does not exist")
        named = set(weight_map.values())
        for entry in sorted(os.listdir(path)):
            if re.fullmatch(shard_pattern, entry) and entry not in named:
                raise Llama2binError(f"{index_path}: shard {entry} is in the directory but missing from the index")
        return weight_map

    def _safetensors_files(self, path: str, weight_map: dict[str, str] | None, files: list[str]) -> dict[str, RawTensor]:
        raw: dict[str, RawTensor] = {}
        opened = {f: SafetensorsFile(os.path.join(path, f), self._pool) for f in files}
        for file, st in opened.items():
            for name in st.names:
                if weight_map is not None and weight_map.get(name) != file:
                    where = weight_map.get(name)
                    raise Llama2binError(
                        f"{st.path}: tensor {name} is "
                        + (f"mapped to {where} by the index" if where else "missing from the index")
                    )
                raw[name] = st.tensor(name)
        if weight_map is not None:
            for name, file in weight_map.items():
                if name not in opened[file]:
                    raise Llama2binError(f"{opened[file].path}: has no tensor {name}, which the index puts there")
        return raw

    def _bin_files(self, path: str, weight_map: dict[str, str] | None, files: list[str]) -> dict[str, RawTensor]:
        raw: dict[str, RawTensor] = {}
        for file in files:
            shard = os.path.join(path, file)
            z = TorchZip(shard, self._pool)
            if not isinstance(z.obj, dict) or not all(isinstance(k, str) for k in z.obj):
                raise Llama2binError(f"{shard}: not a state dict (expected a dict of tensor names to tensors)")
            for name, value in z.obj.items():
                if not isinstance(value, TorchTensor):
                    raise Llama2binError(f"{shard}: entry {name} is not a tensor")
                if weight_map is not None and weight_map.get(name) != file:
                    where = weight_map.get(name)
                    raise Llama2binError(
                        f"{shard}: tensor {name} is " + (f"mapped to {where} by the index" if where else "missing from the index")
                    )
                if _INV_FREQ_RE.match(name):
                    continue
                raw[name] = z.tensor(value, name)
        if weight_map is not None:
            missing = sorted(n for n in weight_map if n not in raw and not _INV_FREQ_RE.match(n))
            if missing:
                shard = os.path.join(path, weight_map[missing[0]])
                raise Llama2binError(f"{shard}: has no tensor {missing[0]}, which the index puts there")
        return raw

    # ---- config and canonical tensors -------------------------------------------------

    def _open(
        self,
        path: str,
        config_path: str,
        cfg: dict[str, Any],
        raw: dict[str, RawTensor],
        rope: tuple[float, RopeScaling | None, tuple[str, ...]],
        max_seq_len: int | None,
    ) -> None:
        theta, scaling, departures = rope
        def int_of(name: str) -> int:
            return int_field(config_path, name, _field(cfg, config_path, name))

        n_heads, dim = int_of("num_attention_heads"), int_of("hidden_size")
        n_kv_heads = optional_int_field(config_path, "num_key_value_heads", cfg.get("num_key_value_heads"))
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads  # 0 stays 0 and is refused, not replaced
        head_size = dim // n_heads if n_heads > 0 else 0
        if max_seq_len is None:
            max_seq_len = optional_int_field(config_path, "max_position_embeddings", cfg.get("max_position_embeddings"))

        refs: dict[str, TensorRef] = {}
        for key, ref in raw.items():
            if _INV_FREQ_RE.match(key):
                continue
            name = canonical_name(key)
            if name is None:
                what = "bias" if key.endswith(".bias") else "tensor"
                raise Llama2binError(f"{path}: unexpected {what} {key}: the .bin formats hold only LLaMA weights")
            if name.endswith("attention.wq") or name.endswith("attention.wk"):
                ref = HfRotaryRef(ref, head_size)
            refs[name] = ref

        tied = bool_field(config_path, "tie_word_embeddings", cfg.get("tie_word_embeddings", False))  # LlamaConfig's default
        output = refs.pop("output", None)
        if "tok_embeddings" not in refs:
            raise Llama2binError(f"{path}: missing tensor model.embed_tokens.weight")
        if output is None:
            if not tied:
                raise Llama2binError(f"{config_path}: tie_word_embeddings is false but there is no lm_head.weight")
            shared = True
        else:
            shared = tensors_equal(output, refs["tok_embeddings"])
            if tied and not shared:
                raise Llama2binError(
                    f"{config_path}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
                )
            if not shared:
                refs["output"] = output

        config = ModelConfig(
            dim=dim,
            hidden_dim=int_of("intermediate_size"),
            n_layers=int_of("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=int_of("vocab_size"),
            max_seq_len=max_seq_len if max_seq_len is not None else DEFAULT_MAX_SEQ_LEN,
            shared_classifier=shared,
            norm_eps=positive_float_field(config_path, "rms_norm_eps", cfg.get("rms_norm_eps", 1e-6)),  # LlamaConfig's default
            rope_theta=theta,
            rope_scaling=scaling,
            bos_id=optional_int_field(config_path, "bos_token_id", cfg.get("bos_token_id")),
            eos_ids=_eos_ids(config_path, cfg.get("eos_token_id")),
            accepted_departures=departures,
        )
        config.validate(config_path)
        check_tensors(path, config, refs, display=hf_name, implied_by=os.path.basename(config_path))
        self.config = config
        self._refs = refs


    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": dict(self._weights_desc)}
