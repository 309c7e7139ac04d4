"""docs/formats.md is the byte-level specification: its header tables must be the code's own
header tables (offset, type, field, bounds), and the docstrings and README point at it."""

import os
import re
import struct

import pytest
from helpers import ROOT

from llama2bin.formats import FORMATS

DOC = os.path.join(ROOT, "docs", "formats.md")
CODES = {"int32": "i", "uint32": "I", "uint8": "B"}


def _table(heading: str) -> list[tuple[int, str, str, str]]:
    """(byte, struct code, field, values) rows of the table under `heading`."""
    text = open(DOC, encoding="utf-8").read()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (\w+) \| (.*) \|$", section, re.MULTILINE)
    return [(int(byte), CODES[kind], name, values) for byte, kind, name, values in rows]


@pytest.mark.parametrize(("heading", "fmt"), [("### The v0 header", "0"), ('### The "ak42" header', "2")])
def test_header_tables_are_the_codes(heading, fmt):
    header = FORMATS[fmt].header
    rows = _table(heading)
    assert [(byte, code, name) for byte, code, name, _ in rows] == [(f.offset, f.code, f.name) for f in header.fields]
    size = int(re.search(r"\((\d+) bytes", heading + open(DOC, encoding="utf-8").read().split(heading, 1)[1])[1])
    assert size == header.size
    for (_, _, name, values), field in zip(rows, header.fields, strict=True):
        if field.constant and name != "group_size":
            assert f"{field.low:#X}".replace("0X", "0x") in values or str(field.low) in values, name
        elif name != "group_size":  # the bounds the reader enforces are the ones written
            assert f"{field.high}" in values and (field.low >= 0 or "±" in values), name


def test_the_magic_bytes_are_spelled_right():
    values = dict((name, v) for _, _, name, v in _table('### The "ak42" header'))["magic"]
    (magic,) = struct.unpack("<I", bytes.fromhex(re.search(r"`([0-9A-F ]+)`", values)[1].replace(" ", "")))
    assert magic == FORMATS["2"].header.field("magic").low


def test_the_spec_is_cited_where_it_is_used():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "docs/formats.md" in readme
    src = os.path.join(ROOT, "src", "llama2bin")
    for folder, _, files in os.walk(src):
        for name in files:
            if name.endswith(".py"):
                assert "FORMATS.md" not in open(os.path.join(folder, name), encoding="utf-8").read(), name
