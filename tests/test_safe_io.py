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
from helpers import DATA, ROOT
from hostile_builders import yaml_laughs

from llama2bin.errors import Llama2binError
from llama2bin.formats.source_registry import open_source
from llama2bin.safe_io import (
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_VALUES,
    MAX_JSON_DEPTH,
    check_plain_data,
    load_json,
    load_plain_yaml,
    open_regular,
    parse_json,
    read_capped,
)
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


# ---- YAML configs: plain data, bounded with aliases expanded ---------------------------------


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("mapping", [False, True])
def test_yaml_billion_laughs_is_refused_naming_the_key(tmp_path, mapping: bool) -> None:
    """9^10 values in 600 bytes: refused by counting each distinct list or mapping once."""
    with pytest.raises(Llama2binError, match=rf"c.yaml: key 'lol' expands to more than {MAX_CONFIG_VALUES} values"):
        load_plain_yaml(_yaml(tmp_path, yaml_laughs(mapping=mapping)))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("models: {}\nx: &a [1, *a]\n", "key 'x' refers to itself (a recursive YAML alias)"),
        ("models: {}\nx: &a {b: {c: *a}}\n", "found unconstructable recursive node"),
        ("models: {}\nx: " + "[" * MAX_CONFIG_DEPTH + "]" * MAX_CONFIG_DEPTH + "\n",
         f"key 'x' nests deeper than {MAX_CONFIG_DEPTH}"),
        ("x: " + "[" * 100000 + "]" * 100000 + "\n", f"not valid YAML: nested deeper than {MAX_CONFIG_DEPTH} levels"),
        ("".join(" " * i + f"k{i}:\n" for i in range(1100)) + " " * 1100 + "v: 1\n", "nested deeper than"),
        # 1000 characters, aliased 5000 times: 5 MB of text from a 6 KB file
        ("s: &s " + "x" * 1000 + "\nx: [" + ", ".join(["*s"] * 5000) + "]\n", "key 'x' expands to more than 4194304 characters"),
        ("models:\n  a: 1\n  a: 2\n", "duplicate key 'a' at line 3"),
        ("x: !!python/name:os.system\n", "could not determine a constructor for the tag 'tag:yaml.org,2002:python/name:os"),
        ("x: !!python/object/apply:os.system [touch PWNED]\n", "could not determine a constructor"),
        ("x: [a\n", "not valid YAML: while parsing a flow sequence"),
        ("x: " + "1" * 5000 + "\n", "4300 digits"),
    ],
)
def test_plain_yaml_refusals(tmp_path, text: str, reason: str) -> None:
    with pytest.raises(Llama2binError) as e:
        load_plain_yaml(_yaml(tmp_path, text))
    message = str(e.value)
    assert message.startswith(str(tmp_path / "c.yaml") + ": ") and reason in message and "\n" not in message, message
    assert not (tmp_path / "PWNED").exists()


def test_many_keys_each_small_are_bounded_together(tmp_path) -> None:
    """Ten keys of 20,000 aliased values each: no key alone is over the bound, the config is."""
    text = "s: &s [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
        f"k{i}: [{', '.join(['*s'] * (2000 - i))}]\n" for i in range(10)
    )
    with pytest.raises(Llama2binError, match=f"expands to more than {MAX_CONFIG_VALUES} values .*the largest key is 'k0'"):
        load_plain_yaml(_yaml(tmp_path, text))


def test_plain_yaml_refuses_special_files_and_size(tmp_path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(Llama2binError, match="is a FIFO"):
        load_plain_yaml(str(fifo))
    with pytest.raises(Llama2binError, match="too large for a config"):
        load_plain_yaml(_yaml(tmp_path, "x: " + "y" * (1 << 20) + "\n"))
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"x: caf\xe9\n")
    with pytest.raises(Llama2binError, match="not UTF-8 at byte 6"):
        load_plain_yaml(str(path))


def test_plain_yaml_reads_real_configs_and_modest_aliases(tmp_path) -> None:
    """Controls: every shipped config loads; an anchor shared by a few models is fine, and so is
    data exactly at the depth bound."""
    for path in [os.path.join(ROOT, "config.yaml")] + sorted(
        os.path.join(ROOT, "config", "examples", f) for f in os.listdir(os.path.join(ROOT, "config", "examples"))
    ):
        assert isinstance(load_plain_yaml(path)["models"], dict), path
    models = "".join(f"  m{i}: {{source: llama2c, demo: mha, quality: *q}}\n" for i in range(50))
    text = "q: &q {kld_mean_max: 0.1}\nmodels:\n" + models
    data = load_plain_yaml(_yaml(tmp_path, text))
    assert data["models"]["m49"]["quality"] == {"kld_mean_max": 0.1}
    check_plain_data({"x": [[[]]]}, "d", max_depth=4)
    with pytest.raises(Llama2binError, match="key 'x' nests deeper than 3 levels"):
        check_plain_data({"x": [[[]]]}, "d", max_depth=3)
