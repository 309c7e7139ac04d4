"""The registries are the one list: source kinds (formats/source_registry.py) and formats
(formats/registry.py) reach the CLI, reverify, the workflow and the config schema from there,
and the capabilities live on the types (no probing with getattr, no branching on "directory")."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from conftest import registered_source_kinds, run_main
from helpers import DATA, ROOT, run_cli

from llama2bin.cli.reverify import parse_plan
from llama2bin.formats import FORMATS, json_version
from llama2bin.formats.families import CODE, open_output
from llama2bin.formats.source_registry import SOURCES, open_source, single_file
from llama2bin.sources.base import TensorEncoding

SCHEMA = os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml")


def _schema() -> dict:
    with open(SCHEMA) as f:
        return yaml.safe_load(f)


def test_the_schemas_source_enum_is_the_source_registry():
    assert _schema()["definitions"]["model"]["properties"]["source"]["enum"] == list(SOURCES)


def test_the_schemas_versions_enum_is_the_format_registry():
    assert _schema()["properties"]["versions"]["items"]["enum"] == [json_version(name) for name in FORMATS]


def test_the_checkpoint_factory_makes_every_registered_kind():
    assert registered_source_kinds() == list(SOURCES)


def test_the_cli_flags_are_the_registrys():
    proc = run_cli("verify", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for kind in SOURCES.values():
        assert f"{kind.flag} {kind.metavar}" in text and " ".join(kind.help.split()) in text
    flags = set(re.findall(r"--(?:checkpoint|meta-llama|hf|bin|gguf)\b", text))
    assert flags == {kind.flag for kind in SOURCES.values()}


def test_every_format_has_its_familys_code():
    for spec in FORMATS.values():
        code = CODE[spec.family.name]
        assert (code.layouts is None) != (code.write is None), spec.name  # one way of writing
        assert spec.rope_tables == (spec.name == "0")  # the field says what v0's section order does


@pytest.mark.parametrize("kind", list(SOURCES))
def test_every_source_kind_opens_as_itself_with_the_encodings_it_declares(kind, checkpoint):
    path = checkpoint(kind)
    with open_source(kind, path) as source:
        assert source.kind == kind
        encodings = {source.tensor(name).encoding for name in source.config.shapes()}
        assert encodings <= SOURCES[kind].encodings
        assert (source.quantization is not None) == (TensorEncoding.Q8_0 in encodings)
    assert single_file(kind) is not SOURCES[kind].directory
    assert os.path.isdir(path) == SOURCES[kind].directory


def test_a_q8_bin_source_declares_its_quantization():
    with open_source("bin", os.path.join(DATA, "tiny_b.v2.bin")) as source:
        assert source.quantization is not None and source.quantization.to_json() == {"format": "2", "group_size": 8}
        t = source.tensor("tok_embeddings")
        assert (t.encoding, t.group_size) == (TensorEncoding.Q8_0, 8)
        q, s = t.read_q8(0, 1)
        assert q.dtype.name == "int8" and s.size == 40 // 8
    with open_source("llama2c", os.path.join(DATA, "tiny_b.pt")) as source:
        assert source.quantization is None
        with pytest.raises(TypeError, match="not Q8_0"):
            source.tensor("tok_embeddings").read_q8(0, 1)


def test_an_unknown_source_kind_names_the_known_ones():
    from llama2bin.errors import Llama2binError

    with pytest.raises(Llama2binError, match="unknown source kind 'gguf' \\(known: llama2c, meta, hf, bin\\)"):
        open_source("gguf", "x")


def test_a_reverify_plan_takes_every_registered_kind():
    plan = {"models": [{"model": kind, "source": kind, "path": f"-{kind}", "files": ["f"], "json": ["j"]}
                       for kind in SOURCES], "verify_options": ["--no-functional"]}
    jobs = parse_plan(json.dumps(plan))
    assert [job.verify_argv[2] for job in jobs] == [f"{kind.flag}=-{kind.name}" for kind in SOURCES.values()]


def test_every_output_opens_once_as_its_own_format():
    for name, path in (("0", "tiny_a.v0.bin"), ("1", "tiny_b.v1.bin"), ("1f", "tiny_b.master_v1.bin"),
                       ("2", "tiny_b.v2.bin")):
        with open_output(os.path.join(DATA, path)) as output:
            assert output.spec is FORMATS[name]
            assert list(output.tensors)[: len(output.config.shapes())] != []
            info = output.describe()
            assert info["format"] == name and info["size_matches"]


def test_an_hf_directory_opens_as_the_hf_format(tmp_path, capsys):
    out = str(tmp_path / "hf")
    assert run_main(["export", out, "--checkpoint", os.path.join(DATA, "tiny_a.pt"), "--version", "hf", "--quiet"],
                    capsys).returncode == 0
    with open_output(out) as output:
        assert output.spec is FORMATS["hf"] and output.hashed_path.endswith("model.safetensors")
        assert output.stored_name("layers.0.attention.wq") == "model.layers.0.self_attn.q_proj.weight"
        assert {t.encoding for t in output.tensors.values()} == {TensorEncoding.F32}


# The capabilities are on the types: nothing outside the registry modules probes for them or
# asks whether an output is a directory by comparing kinds.
_PROBES = re.compile(r"getattr\([^)]*[\"'](group_size|quantized|src|dtype|offset)[\"']")
_KIND_BRANCH = re.compile(r"\bkind\s*[!=]=\s*DIRECTORY\b|\bDIRECTORY\b")
_REGISTRY_MODULES = {"formats/families.py", "formats/spec.py", "formats/source_registry.py", "formats/registry.py"}


def test_no_capability_is_probed_and_no_code_branches_on_directory():
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "src", "llama2bin")):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.join(ROOT, "src", "llama2bin"))
            if not name.endswith(".py") or rel in _REGISTRY_MODULES:
                continue
            for i, line in enumerate(open(path, encoding="utf-8"), 1):
                if _PROBES.search(line) or _KIND_BRANCH.search(line):
                    found.append(f"{rel}:{i}: {line.strip()}")
    for smk in os.listdir(os.path.join(ROOT, "workflow", "rules")):
        text = open(os.path.join(ROOT, "workflow", "rules", smk), encoding="utf-8").read()
        found += [f"workflow/rules/{smk}: {m.group(0)}" for m in _KIND_BRANCH.finditer(text)]
    assert found == []
