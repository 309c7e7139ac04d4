"""safe_io and the field checks, in process: each refusal names the file and the reason, and
what real files contain (integral floats, nesting a few levels deep, symlinks to regular files)
still reads. The CLI-level corpus is tests/test_hostile_inputs.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket

import pytest
from helpers import DATA

from llama2bin.errors import Llama2binError
from llama2bin.formats.source_registry import open_source
from llama2bin.safe_io import MAX_JSON_DEPTH, load_json, open_regular, parse_json, read_capped
from llama2bin.sources.policy import int_field, positive_float_field


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"eps": NaN}', "NaN is not a number JSON allows"),
        (b'{"eps": -Infinity}', "-Infinity is not a number JSON allows"),
        (b'{"eps": 1e999}', "1e999 overflows to infinity"),
        (b'{"dim": 1, "dim": 2}', "duplicate key 'dim'"),
        (b'{"a": "\xff"}', "not UTF-8 at byte 7"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), f"nested deeper than {MAX_JSON_DEPTH}"),
        (b"[" * 100000 + b"]" * 100000, f"nested deeper than {MAX_JSON_DEPTH}"),
        (b"1" * 5000, "4300 digits"),
        (b'{"a": 1', "Expecting"),
    ],
)
def test_strict_json_refusals(raw: bytes, reason: str) -> None:
    with pytest.raises(Llama2binError) as e:
        parse_json(raw, "cfg.json")
    assert str(e.value).startswith("cfg.json: not valid JSON: ")
    assert reason in str(e.value)


def test_strict_json_reads_what_real_files_hold() -> None:
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(nested, "x") is not None
    assert parse_json(b'{"rope_theta": 1e4, "dim": 4096, "name": "\xc3\xb1"}', "x") == {
        "rope_theta": 10000.0, "dim": 4096, "name": "ñ"}


def test_only_regular_files_open(tmp_path) -> None:
    real = tmp_path / "config.json"
    real.write_bytes(b'{"dim": 8}')
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert load_json(str(link), "config") == {"dim": 8}  # the HF cache is made of symlinks
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    try:
        for path, what in [(fifo, "a FIFO (named pipe)"), (zero, "a character device"), (tmp_path, "a directory")]:
            with pytest.raises(Llama2binError, match=re.escape(f"{path}: is {what}; a config must be a regular file")):
                open_regular(str(path), "config")
        with pytest.raises(Llama2binError, match=f"{sock_path}: cannot open"):  # ENXIO
            open_regular(str(sock_path), "config")
        with pytest.raises(Llama2binError, match="no such file"):
            open_regular(str(tmp_path / "missing"), "config")
    finally:
        sock.close()


def test_size_cap_refuses_before_reading(tmp_path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte declared, nothing on disk
    with pytest.raises(Llama2binError, match=r"1099511627776 bytes is too large for a header \(limit 1024\)"):
        read_capped(str(big), 1024, "header")
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1024)
    assert read_capped(str(small), 1024, "header") == b"x" * 1024


@pytest.mark.parametrize(
    ("value", "message"),
    [(64.9, "got float 64.9"), (True, "got a boolean True"), ("64", "got a string '64'"),
     ([64], "got a list [64]"), ({"a": 1}, "got an object"), (None, "got null")],
)
def test_int_field_refuses_what_is_not_an_integer(value: object, message: str) -> None:
    with pytest.raises(Llama2binError, match="params.json: dim must be an integer, " + message.replace("[", r"\[")):
        int_field("params.json", "dim", value)


def test_int_field_accepts_integral_floats() -> None:
    # 4096.0 is 4096 exactly: accepting it truncates nothing.
    assert int_field("p", "dim", 4096.0) == 4096 and isinstance(int_field("p", "dim", 4096.0), int)
    assert int_field("p", "dim", 7) == 7


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0, -1e-5, "1e-5", True, None])
def test_positive_float_field_refusals(value: object) -> None:
    with pytest.raises(Llama2binError, match="norm_eps must be a positive finite number"):
        positive_float_field("p", "norm_eps", value)
    assert positive_float_field("p", "norm_eps", 1e-6) == 1e-6


def test_zero_kv_heads_is_refused_not_replaced(tmp_path) -> None:
    # `num_key_value_heads: 0` used to become num_attention_heads without a word.
    src = tmp_path / "hf"
    shutil.copytree(os.path.join(DATA, "tiny_hf_untied"), src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"num_key_value_heads": 0}))
    with pytest.raises(Llama2binError, match="n_kv_heads must be a positive integer, got 0"):
        open_source("hf", str(src))
