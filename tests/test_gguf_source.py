"""GGUF as a source (sources/gguf.py, gguf_parse.py): llama.cpp's files read back, hostile ones refused.

Values are compared with gguf's own dequantization of GGUFReader's data; the converter's F32
GGUF of our checkpoint must give the same v0/v2 files as the checkpoint itself.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
import resource
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gguf import GGUFReader, quants

from llama2bin.errors import Llama2binError
from llama2bin.formats.gguf_header import KV, TensorInfo, build_header
from llama2bin.formats.gguf_plan import metadata_kvs, tensor_plan
from llama2bin.formats.gguf_write import GgufModelInfo, gguf_layout
from llama2bin.formats.writer import export
from llama2bin.model import ModelConfig
from llama2bin.rope_freqs import RopeScaling
from llama2bin.sources.gguf import GgufSource
from llama2bin.sources.gguf_file import FileType, GgmlType, ValueType, llama3_rope_factors
from llama2bin.sources.gguf_parse import read_gguf_header
from llama2bin.sources.hf import HfSource

DATA = os.path.join(os.path.dirname(__file__), "data", "gguf")
CKPT = os.path.join(DATA, "tiny_hf_gqa")


@pytest.mark.parametrize("t", ["f32", "f16", "bf16", "q8_0"])
def test_converter_ggufs_read_as_gguf_dequantizes(t: str) -> None:
    path = os.path.join(DATA, f"tiny_hf_gqa.{t}.gguf")
    by_name = {x.name: x for x in GGUFReader(path).tensors}
    with GgufSource(path) as src, HfSource(CKPT) as hf:
        assert dataclasses.replace(src.config, norm_eps=1e-5) == hf.config  # GGUF stores eps as float32
        assert src.config.norm_eps == float(np.float32(1e-5))
        from llama2bin.sources.gguf_file import gguf_tensor_name

        for name in hf.config.shapes():
            ref = src.tensor(name)
            g = by_name[gguf_tensor_name(name)]
            want = quants.dequantize(g.data, g.tensor_type).reshape(ref.shape).astype(np.float32)
            got = ref.read_rows(0, ref.rows).reshape(ref.shape)
            assert got.tobytes() == want.tobytes(), name
            if ref.rows > 3:  # a row range in the middle, through the reused buffer
                out = np.empty(ref.cols * 2, np.float32)
                assert ref.read_rows_into(1, 3, out).tobytes() == want[1:3].tobytes()
        assert (src.quantization and src.quantization.to_json()) == ({"format": "gguf-q8_0", "group_size": 32}
                                                                    if t == "q8_0" else None)
        assert src.describe()["kind"] == "gguf"


def test_llama_cpp_f32_gguf_gives_the_checkpoints_v0_and_v2(tmp_path) -> None:
    with HfSource(CKPT) as hf:
        export(hf, [("0", str(tmp_path / "hf.v0.bin")), ("2", str(tmp_path / "hf.v2.bin"))], quiet=True)
    with GgufSource(os.path.join(DATA, "tiny_hf_gqa.f32.gguf")) as g:
        export(g, [("0", str(tmp_path / "g.v0.bin")), ("2", str(tmp_path / "g.v2.bin"))], quiet=True)
    for v in ("v0", "v2"):
        assert filecmp.cmp(tmp_path / f"hf.{v}.bin", tmp_path / f"g.{v}.bin", shallow=False)


def test_q8_0_gguf_to_v1_carries_q_and_scales_and_v2_would_requantize(tmp_path) -> None:
    """v1 at group size 32 (it divides dim 64): q and (float16 -> float32) scales are copied. v2 needs
    a group size dividing hidden_dim 80 too (16): that would quantize twice, which is refused."""
    from llama2bin.formats.reader import BinFile

    path = os.path.join(DATA, "tiny_hf_gqa.q8_0.gguf")
    with GgufSource(path) as g:
        result = export(g, [("1", str(tmp_path / "g.v1.bin"))], quiet=True)
        assert result.group_sizes == {"1": 32}
        wq = g.tensor("layers.0.attention.wq")
        q_src, s_src = wq.read_q8(0, wq.rows)
        with pytest.raises(Llama2binError, match="already Q8_0 at group size 32; version 2 at group size 16"):
            export(g, [("2", str(tmp_path / "g.v2.bin"))], quiet=True)
    with BinFile(str(tmp_path / "g.v1.bin")) as bf:
        q, scales = bf.tensors["layers.0.attention.wq"].read_q8(0, wq.rows)
        assert np.array_equal(q, q_src) and np.array_equal(scales, s_src)


# ---- hostile files: one line each -------------------------------------------------------------


def s(x: bytes | str) -> bytes:
    raw = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(raw)) + raw


def kv_u32(key: str, v: int) -> bytes:
    return s(key) + struct.pack("<II", ValueType.UINT32, v)


def ti(name: str, ne: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ggml_type, offset)


def raw_gguf(kvs: list[bytes], infos: list[bytes], data: bytes = b"", version: int = 3,
             counts: tuple[int, int] | None = None) -> bytes:
    n_t, n_kv = counts if counts is not None else (len(infos), len(kvs))
    head = b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % 32) + data


TINY = ModelConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=16, max_seq_len=8,
                   shared_classifier=True)


def model_gguf(kvs: list[KV] | None = None, edit: dict[str, KV | None] | None = None,
               infos: list[TensorInfo] | None = None) -> bytes:
    """A llama GGUF of TINY (weights zero) with keys replaced (None: removed) or tensors changed."""
    kvs = kvs if kvs is not None else metadata_kvs(TINY, FileType.ALL_F32, "tiny", 1)
    for key, kv in (edit or {}).items():
        kvs = [k for k in kvs if k.key != key] + ([kv] if kv is not None else [])
    infos = infos if infos is not None else [p.info for p in tensor_plan(TINY, FileType.ALL_F32)]
    head = build_header(kvs, infos)
    return head.header + bytes(head.size - len(head.header))


def _t(name: str, ne: tuple[int, ...], ggml_type: GgmlType = GgmlType.F32) -> TensorInfo:
    return TensorInfo(name, ne, ggml_type)


BASE_INFOS = [p.info for p in tensor_plan(TINY, FileType.ALL_F32)]
HOSTILE = {
    "bad_magic": (b"GGUX" + bytes(60), "not a GGUF file"),
    "empty": (b"", "not a GGUF file"),
    "version_1": (raw_gguf([], [], version=1), "GGUF version 1 is not supported"),
    "big_endian": (raw_gguf([], [], version=3 << 24), "a big-endian file"),
    "truncated_counts": (b"GGUF" + struct.pack("<I", 3) + b"\0\0", "tensor count of 8 bytes goes beyond the end"),
    "tensors_in_the_billions": (raw_gguf([], [], counts=(3 << 30, 0)), "tensor count 3221225472 is beyond"),
    "keys_in_the_billions": (raw_gguf([], [], counts=(0, 1 << 40)), "key count 1099511627776 is beyond"),
    "counts_beyond_the_file": (raw_gguf([], [], counts=(1000, 1000)), "1000 keys and 1000 tensor infos"),
    "string_beyond_the_file": (raw_gguf([s("k") + struct.pack("<IQ", ValueType.STRING, 1 << 62)], []),
                               "string k of 4611686018427387904 bytes goes beyond the end"),
    "key_length_beyond_the_file": (raw_gguf([struct.pack("<Q", 1 << 50)], [], bytes(64)), "key of 1125899906842624 bytes"),
    "array_beyond_the_file": (raw_gguf([s("k") + struct.pack("<IIQ", ValueType.ARRAY, ValueType.UINT32, 1 << 61)], []),
                              "array k of 2305843009213693952 UINT32"),
    "string_array_beyond_the_file": (raw_gguf([s("k") + struct.pack("<IIQ", ValueType.ARRAY, ValueType.STRING, 1 << 40)], []),
                                     "array k of 1099511627776 strings"),
    "nested_arrays": (raw_gguf([s("k") + struct.pack("<IIQ", ValueType.ARRAY, ValueType.ARRAY, 1 << 40)
                                + struct.pack("<IQ", ValueType.ARRAY, 1 << 40) * 64], []), "holds arrays"),
    "unknown_value_type": (raw_gguf([s("k") + struct.pack("<I", 13)], []), "type of k 13 is not a GGUF value type"),
    "bool_not_0_or_1": (raw_gguf([s("k") + struct.pack("<IB", ValueType.BOOL, 7)], []), "boolean k is 7"),
    "duplicate_key": (raw_gguf([kv_u32("a", 1), kv_u32("a", 2)], []), "duplicate key 'a'"),
    "empty_key": (raw_gguf([kv_u32("", 1)], []), "empty key"),
    "key_not_utf8": (raw_gguf([s(b"\xff\xfe") + struct.pack("<II", 4, 1)], []), "key is not valid UTF-8"),
    "bad_alignment": (raw_gguf([kv_u32("general.alignment", 48)], []), "general.alignment must be a UINT32 power of two"),
    "duplicate_tensor": (raw_gguf([], [ti("w", (32,), 0, 0), ti("w", (32,), 0, 128)], bytes(256)), "duplicate tensor name 'w'"),
    "long_tensor_name": (raw_gguf([], [ti("x" * 64, (32,), 0, 0)], bytes(128)), "longer than 63 bytes"),
    "five_dims": (raw_gguf([], [ti("w", (1, 1, 1, 1, 1), 0, 0)], bytes(32)), "has 5 dimensions"),
    "zero_dim": (raw_gguf([], [ti("w", (32, 0), 0, 0)], bytes(32)), "[32, 0]: a zero"),
    "dims_overflow": (raw_gguf([], [ti("w", (1 << 32, 1 << 32, 1 << 32), 0, 0)], bytes(32)), "their product overflows"),
    "unknown_tensor_type": (raw_gguf([], [ti("w", (32,), 77, 0)], bytes(128)), "tensor w has unknown type 77"),
    "partial_q8_0_block": (raw_gguf([], [ti("w", (33, 2), 8, 0)], bytes(128)), "row length 33 is not a whole number of Q8_0"),
    "unaligned_offset": (raw_gguf([], [ti("w", (32,), 0, 16)], bytes(256)), "offset 16 is not a multiple of the alignment 32"),
    "tensor_beyond_the_file": (raw_gguf([], [ti("w", (32, 32), 0, 0)], bytes(128)), "tensor w (4096 bytes at"),
    "tensor_far_beyond_the_file": (raw_gguf([], [ti("w", (32,), 0, 1 << 60)], bytes(128)), "ends beyond the end of the file"),
    "overlapping_tensors": (raw_gguf([], [ti("a", (64,), 0, 0), ti("b", (64,), 0, 128)], bytes(512)),
                            "tensors a and b overlap"),
    # the model, not the file
    "other_architecture": (model_gguf(edit={"general.architecture": KV("general.architecture", ValueType.STRING, "qwen2")}),
                           "general.architecture = 'qwen2': only llama GGUFs are read"),
    "missing_hyper_parameter": (model_gguf(edit={"llama.embedding_length": None}), "no llama.embedding_length"),
    "per_layer_feed_forward": (model_gguf(edit={"llama.feed_forward_length": KV("llama.feed_forward_length", ValueType.ARRAY,
                                                                                [64], ValueType.UINT32)}),
                               "per-layer values are not supported"),
    "string_for_a_number": (model_gguf(edit={"llama.block_count": KV("llama.block_count", ValueType.STRING, "1")}),
                            "llama.block_count must be an integer"),
    "nan_epsilon": (model_gguf(edit={"llama.attention.layer_norm_rms_epsilon": KV(
        "llama.attention.layer_norm_rms_epsilon", ValueType.FLOAT32, float("nan"))}), "must be a positive finite number"),
    "linear_rope_scaling": (model_gguf(edit={"llama.rope.scaling.type": KV("llama.rope.scaling.type", ValueType.STRING,
                                                                           "linear")}), "no llama.rope.scaling.factor"),
    "yarn_rope_scaling": (model_gguf(edit={"llama.rope.scaling.type": KV("llama.rope.scaling.type", ValueType.STRING, "yarn")}),
                          "rope.scaling.type = 'yarn': llama2bin computes linear and llama3 rope scaling only"),
    "rope_freqs_zero": (model_gguf(infos=[_t("rope_freqs.weight", (8,)), *BASE_INFOS]),
                        "rope_freqs.weight ends with 0.0, not a Llama 3 scaling factor"),
    "rope_freqs_shape": (model_gguf(infos=[_t("rope_freqs.weight", (16,)), *BASE_INFOS]), "rope_freqs.weight must be F32 [8]"),
    "partial_rotary": (model_gguf(edit={"llama.rope.dimension_count": KV("llama.rope.dimension_count", ValueType.UINT32, 8)}),
                       "llama.rope.dimension_count = 8, but the head size is 16"),
    "experts": (model_gguf(edit={"llama.expert_count": KV("llama.expert_count", ValueType.UINT32, 8)}),
                "mixture-of-experts models are not supported"),
    "rope_theta": (model_gguf(edit={"llama.rope.freq_base": KV("llama.rope.freq_base", ValueType.FLOAT32, 500000.0)}),
                   "llama.rope.freq_base = 500000, but llama2.c's run.c/runq.c compute RoPE at 10000 without scaling; "
                   "pass --allow-rope-theta"),
    "unsupported_tensor_type": (model_gguf(infos=[TensorInfo(i.name, i.ne, 2) if i.name == "blk.0.ffn_up.weight" else i  # type: ignore[arg-type]
                                                  for i in BASE_INFOS]),
                                "tensor blk.0.ffn_up.weight has type Q4_0: llama2bin reads F32, F16, BF16 and Q8_0"),
    "unknown_tensor": (model_gguf(infos=[*BASE_INFOS, _t("blk.0.attn_qkv.weight", (32, 96))]),
                       "unexpected tensor blk.0.attn_qkv.weight"),
    "missing_tensor": (model_gguf(infos=[i for i in BASE_INFOS if i.name != "blk.0.ffn_up.weight"]),
                       "missing tensor blk.0.ffn_up.weight"),
}
# attn_k is (kv_dim, dim) = (32, 32) for TINY
HOSTILE["wrong_shape"] = (model_gguf(infos=[_t(i.name, (32, 16)) if i.name == "blk.0.attn_k.weight" else i
                                            for i in BASE_INFOS]),
                          "tensor blk.0.attn_k.weight has shape [16, 32], its llama.* metadata implies [32, 32]")


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_gguf_is_refused_in_one_line(tmp_path, case: str) -> None:
    content, needle = HOSTILE[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(content)
    with pytest.raises(Llama2binError) as err:
        GgufSource(str(path)).close()
    message = str(err.value)
    assert needle in message and "\n" not in message and message.startswith(str(path)), message


def test_the_valid_base_of_the_hostile_cases_opens(tmp_path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(model_gguf())
    with GgufSource(str(path)) as src:
        assert src.config == dataclasses.replace(TINY, norm_eps=float(np.float32(1e-5)))


def _scaled_gguf(tmp_path, scaling: RopeScaling, theta: float, tamper: bool = False) -> str:
    cfg = dataclasses.replace(TINY, rope_theta=theta, rope_scaling=scaling)
    path = str(tmp_path / "scaled.gguf")
    raw = bytearray(gguf_layout_bytes(cfg))
    if tamper:  # a rope_freqs made with another original context: same factor, other band edges
        layout = gguf_layout("gguf-f32", cfg, GgufModelInfo("s"))
        other = llama3_rope_factors(TINY.head_size, theta, dataclasses.replace(scaling, original_max_position_embeddings=64))
        raw[layout.sections[0].offset : layout.sections[0].offset + other.nbytes] = other.tobytes()
    with open(path, "wb") as f:
        f.write(bytes(raw))
    return path


def gguf_layout_bytes(cfg: ModelConfig) -> bytes:
    layout = gguf_layout("gguf-f32", cfg, GgufModelInfo("s"))
    raw = bytearray(layout.size)
    raw[: len(layout.header)] = layout.header
    for sec in layout.sections:
        if sec.tensor in layout.generated:
            raw[sec.offset : sec.offset + sec.nbytes] = layout.generated[sec.tensor].tobytes()
    return bytes(raw)


@pytest.mark.parametrize("scaling", [RopeScaling("linear", 4.0), RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)],
                         ids=["linear", "llama3"])
def test_rope_scaling_reads_back_with_allow_rope_theta(tmp_path, scaling: RopeScaling) -> None:
    path = _scaled_gguf(tmp_path, scaling, 500000.0)
    with pytest.raises(Llama2binError, match="pass --allow-rope-theta"):
        GgufSource(path)
    with GgufSource(path, allow_rope_theta=True) as src:
        assert src.config.rope_scaling == scaling and src.config.rope_theta == 500000.0
        assert scaling.departure() in src.config.accepted_departures
        assert "rope_freqs" not in " ".join(src.config.shapes())


def test_rope_freqs_of_unknown_parameters_are_refused(tmp_path) -> None:
    path = _scaled_gguf(tmp_path, RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), 500000.0, tamper=True)
    with pytest.raises(Llama2binError, match="is not Llama 3 scaling of factor 32 .* its parameters cannot be told"):
        GgufSource(path, allow_rope_theta=True)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_not_a_regular_file_is_refused_at_once(tmp_path, kind: str) -> None:
    path = str(tmp_path / "m.gguf")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    else:
        os.mkdir(path)
    with pytest.raises(Llama2binError, match="must be a regular file|is a directory"):
        GgufSource(path)


def test_huge_declared_sizes_cost_no_memory(tmp_path) -> None:
    """Counts and lengths in the billions, under a 512 MiB address-space cap, in a fresh process."""
    files = []
    for case in ("tensors_in_the_billions", "string_beyond_the_file", "array_beyond_the_file", "nested_arrays",
                 "string_array_beyond_the_file", "dims_overflow", "tensor_far_beyond_the_file"):
        (tmp_path / case).write_bytes(HOSTILE[case][0])
        files.append(str(tmp_path / case))
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
        from llama2bin.errors import Llama2binError
        from llama2bin.sources.gguf_parse import read_gguf_header
        for path in {files!r}:
            try:
                read_gguf_header(path)
            except Llama2binError as e:
                print("refused", e)
            else:
                sys.exit("accepted " + path)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (30, 30)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("refused") == len(files)


def test_header_of_our_own_q8_0_file(tmp_path) -> None:
    h = read_gguf_header(os.path.join(DATA, "tiny_hf_gqa.q8_0.gguf"))
    assert h.version == 3 and h.alignment == 32 and h.data_offset % 32 == 0 and len(h.tensors) == 21
    assert h.kv["tokenizer.ggml.tokens"].sub_type == ValueType.STRING and len(h.kv["tokenizer.ggml.tokens"].value) == 304
    assert h.kv["tokenizer.ggml.scores"].value.dtype == np.dtype("<f4")
