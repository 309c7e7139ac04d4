"""The GGUF header serializer (formats/gguf_header.py) against gguf-py's GGUFWriter, byte for byte."""

from __future__ import annotations

import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from llama2bin.formats.gguf_header import KV, TensorInfo, build_header
from llama2bin.formats.gguf_plan import tensor_plan
from llama2bin.formats.gguf_vocab_hf import hf_sentencepiece_vocab
from llama2bin.formats.gguf_write import GgufModelInfo, gguf_layout
from llama2bin.sources.gguf_file import FileType, GgmlType, ValueType
from llama2bin.sources.hf import HfSource

DATA = os.path.join(os.path.dirname(__file__), "data", "gguf")


def writer_header(path: str, kvs: list[KV], tensors: list[TensorInfo]) -> bytes:
    """What GGUFWriter writes before the first tensor's data for these keys and tensor infos."""
    w = GGUFWriter(path, arch="llama")
    for kv in kvs:
        w.add_key_value(kv.key, kv.value, GGUFValueType(kv.type), None if kv.sub_type is None else GGUFValueType(kv.sub_type))
    for t in tensors:
        shape = tuple(reversed(t.ne))
        w.add_tensor_info(t.name, shape, np.dtype(np.float32), t.nbytes, raw_dtype=GGMLQuantizationType(t.ggml_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    w.write_padding(w.fout[0], w.fout[0].tell())  # what write_tensors_to_file writes first
    w.close()
    with open(path, "rb") as f:
        return f.read()


def every_value_type() -> list[KV]:
    return [
        KV("general.architecture", ValueType.STRING, "llama"),
        KV("t.u8", ValueType.UINT8, 255), KV("t.i8", ValueType.INT8, -128), KV("t.u16", ValueType.UINT16, 65535),
        KV("t.i16", ValueType.INT16, -32768), KV("t.u32", ValueType.UINT32, 2**32 - 1), KV("t.i32", ValueType.INT32, -(2**31)),
        KV("t.f32", ValueType.FLOAT32, 0.1), KV("t.bool", ValueType.BOOL, True), KV("t.u64", ValueType.UINT64, 2**64 - 1),
        KV("t.i64", ValueType.INT64, -(2**63)), KV("t.f64", ValueType.FLOAT64, 1e300),
        KV("t.str", ValueType.STRING, "größe ▁ ñandú \n {{ template }}"),
        KV("t.bytes", ValueType.STRING, b"<0x0A>"),
        KV("t.tokens", ValueType.ARRAY, [b"<unk>", "▁hello".encode(), b"", "日本".encode()], ValueType.STRING),
        KV("t.scores", ValueType.ARRAY, [0.0, -1000.0, 1.5e-7, -3.25], ValueType.FLOAT32),
        KV("t.types", ValueType.ARRAY, [1, 2, 3, 6], ValueType.INT32),
        KV("t.inferred_ints", ValueType.ARRAY, [5, 6, 7]),  # element type from the values: INT32
        KV("t.inferred_floats", ValueType.ARRAY, [0.5, 2.0]),  # FLOAT32
        KV("t.inferred_strs", ValueType.ARRAY, ["a", "bc"]),  # STRING
        KV("t.bools", ValueType.ARRAY, [True, False, True], ValueType.BOOL),
        KV("t.u64s", ValueType.ARRAY, [1, 2**64 - 1], ValueType.UINT64),
        KV("t.f64s", ValueType.ARRAY, [0.1, -2.5], ValueType.FLOAT64),
    ]


def test_every_value_type_and_tensor_infos_equal_gguf_writer(tmp_path) -> None:
    tensors = [TensorInfo("a.weight", (64, 3), GgmlType.Q8_0), TensorInfo("b", (5,), GgmlType.F32),
               TensorInfo("c.weight", (7, 2, 3), GgmlType.F16), TensorInfo("d", (33,), GgmlType.BF16)]
    head = build_header(every_value_type(), tensors)
    assert head.header == writer_header(str(tmp_path / "w.gguf"), every_value_type(), tensors)
    assert len(head.header) == head.data_offset and head.data_offset % 32 == 0
    # offsets: each tensor padded to 32, in order (204 -> 224, 20 -> 32, 84 -> 96, 66 -> 96 bytes)
    assert [o - head.data_offset for o in head.tensor_offsets] == [0, 224, 256, 352]
    assert head.size == head.data_offset + 448


def test_a_real_header_equals_gguf_writer(tmp_path) -> None:
    """The metadata and tensor infos of the golden checkpoint's Q8_0 GGUF (tokenizer arrays included)."""
    d = os.path.join(DATA, "tiny_hf_gqa")
    with HfSource(d) as src:
        vocab = hf_sentencepiece_vocab(os.path.join(d, "tokenizer.model"), src.config.vocab_size, d)
        layout = gguf_layout("gguf-q8_0", src.config, GgufModelInfo("tiny", vocab))
        infos = [p.info for p in tensor_plan(src.config, FileType.MOSTLY_Q8_0)]
    assert layout.header == writer_header(str(tmp_path / "w.gguf"), list(layout.kvs), infos)


def test_whole_file_equals_gguf_writer_with_data(tmp_path) -> None:
    """Header + tensors + padding, trailing padding included: the file GGUFWriter writes."""
    rng = np.random.default_rng(0)
    arrays = {"x.weight": rng.standard_normal((3, 5)).astype(np.float32), "y": rng.standard_normal(7).astype(np.float16)}
    w = GGUFWriter(str(tmp_path / "w.gguf"), arch="llama")
    for name, a in arrays.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    head = build_header([KV("general.architecture", ValueType.STRING, "llama")],
                        [TensorInfo("x.weight", (5, 3), GgmlType.F32), TensorInfo("y", (7,), GgmlType.F16)])
    ours = bytearray(head.size)
    ours[: len(head.header)] = head.header
    for offset, a in zip(head.tensor_offsets, arrays.values(), strict=True):
        ours[offset : offset + a.nbytes] = a.tobytes()
    assert bytes(ours) == (tmp_path / "w.gguf").read_bytes()


def test_duplicates_and_empty_arrays_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="duplicate GGUF key"):
        build_header([KV("a", ValueType.UINT8, 1), KV("a", ValueType.UINT8, 2)], [])
    with pytest.raises(ValueError, match="duplicate GGUF tensor"):
        build_header([], [TensorInfo("t", (1,), GgmlType.F32)] * 2)
    with pytest.raises(ValueError, match="never empty"):
        build_header([KV("a", ValueType.ARRAY, [], ValueType.INT32)], [])
