"""The format registry: one header table per format that encodes and decodes, identification
from the header alone, and the layering (formats never import a later stage)."""

import ast
import os

import pytest
from helpers import ROOT, run_cli

from llama2bin.errors import Llama2binError
from llama2bin.formats import BIN_FORMATS, DIRECTORY, FILE, FORMATS, identify, json_version
from llama2bin.model import ModelConfig

CONFIGS = [
    ModelConfig(32, 96, 2, 4, 4, 64, 16, shared_classifier=True),
    ModelConfig(40, 112, 3, 4, 2, 80, 12, shared_classifier=False),
]


def test_every_format_is_registered_by_its_name_with_readers_and_losses():
    assert list(FORMATS) == ["0", "1", "1f", "2", "hf"] and BIN_FORMATS == ("0", "1", "1f", "2")
    for name, spec in FORMATS.items():
        assert spec.name == name and spec.read_by and spec.loses and spec.description
        assert (spec.kind == FILE) == (spec.header is not None and spec.order is not None)
    assert FORMATS["hf"].kind == DIRECTORY and FORMATS["hf"].source_kind == "hf"
    assert [json_version(n) for n in FORMATS] == [0, 1, "1f", 2, "hf"]
    assert [spec.title for spec in FORMATS.values()] == ["version 0", "version 1", "version 1f", "version 2",
                                                         "Hugging Face directory"]  # report titles


@pytest.mark.parametrize("name", ["0", "1", "1f", "2"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_header_table_decodes_what_it_encodes_and_identifies_its_format(name, cfg):
    spec = FORMATS[name]
    gs = 8 if spec.quantized else None
    head = spec.header_bytes(cfg, gs)
    assert len(head) == (28 if name == "0" else 256)
    assert identify(head, "f") is spec
    assert spec.decode_header(head, "f") == (cfg, gs)


def test_the_two_version_1_headers_differ_only_in_the_group_size_bytes():
    cfg = CONFIGS[1]
    seed, master = FORMATS["1"].header_bytes(cfg, 8), FORMATS["1f"].header_bytes(cfg, None)
    assert [i for i in range(256) if seed[i] != master[i]] == [37]  # group_size 8, little-endian
    assert master[36] == 0 and seed[36] == 0  # untied: shared_classifier 0 in both


def test_an_unknown_version_names_the_ones_read():
    head = bytearray(FORMATS["2"].header_bytes(CONFIGS[0], 8))
    head[4] = 9
    with pytest.raises(Llama2binError, match=r"unsupported version 9 at byte 4 \(this reads 1 \(1f\), 1 \(1\), 2 \(2\)\)"):
        identify(bytes(head), "f")


def test_help_says_which_programs_read_which_format():
    proc = run_cli("export", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for name, spec in FORMATS.items():
        assert f"{name}: {spec.description}" in text and " ".join(spec.read_by.split()) in text
    assert "run.c" in text and "runq.c" in text


LATER = ("checks", "verify", "verify_hf", "functional", "ccheck", "forward", "report", "plots", "cli")


@pytest.mark.parametrize("package", ["sources", "formats"])
def test_formats_and_sources_never_import_a_later_stage(package):
    """The flow is sources -> formats -> checks -> report -> cli: no arrow back up."""
    folder = os.path.join(ROOT, "src", "llama2bin", package)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(folder, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..x import
                top = (node.module or "").split(".")[0]
                assert top not in LATER, f"{package}/{name} imports {top}"
                if package == "sources":
                    assert top not in ("formats", "reader", "writer"), f"sources/{name} imports {top}"
