"""The format registry: one header table per format that encodes and decodes, identification
from the header alone, and the layering of the whole package (no import from a later stage of
the flow, no import cycles)."""

import ast
import os
import sys

import pytest
from helpers import ROOT, run_cli

from llama2bin.errors import Llama2binError
from llama2bin.formats import FORMATS, GGUF_FILE, HF_DIRECTORY, LLAMA2C_BIN, identify, json_version
from llama2bin.model import ModelConfig

CONFIGS = [
    ModelConfig(32, 96, 2, 4, 4, 64, 16, shared_classifier=True),
    ModelConfig(40, 112, 3, 4, 2, 80, 12, shared_classifier=False),
]


def test_every_format_is_registered_by_its_name_with_readers_and_losses():
    gguf = ["gguf-f32", "gguf-f16", "gguf-bf16", "gguf-q8_0"]
    assert list(FORMATS) == ["0", "1", "1f", "2", "hf", *gguf]
    for name, spec in FORMATS.items():
        assert spec.name == name and spec.read_by and spec.loses and spec.description
        assert (spec.family == LLAMA2C_BIN) == (spec.header is not None and spec.order is not None)
    assert FORMATS["hf"].family == HF_DIRECTORY and FORMATS["hf"].directory and not FORMATS["2"].directory
    assert [json_version(n) for n in FORMATS] == [0, 1, "1f", 2, "hf", *gguf]
    assert [spec.title for spec in FORMATS.values()] == ["version 0", "version 1", "version 1f", "version 2",
                                                         "Hugging Face directory", "GGUF F32", "GGUF F16", "GGUF BF16",
                                                         "GGUF Q8_0"]  # report titles
    assert all(FORMATS[n].family == GGUF_FILE and FORMATS[n].output_name("m") == f"m.{n[5:]}.gguf" for n in gguf)


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


# The flow, in order: a module may import its own stage, an earlier one and the foundation,
# never a later stage. fetch/ obtains checkpoints, so it comes before the sources that read them.
STAGES = ("fetch", "sources", "formats", "checks", "report", "cli")
# Small modules every stage may use; they import only each other ("" is the package face).
FOUNDATION = ("", "constants", "errors", "model", "rope_freqs", "torch_cpu_math", "torch_cpu_trig", "native",
              "job_client", "safe_io", "typed_json", "atomic", "outputs_guard", "parallel", "progress", "tokenizer", "demo")
PACKAGE = os.path.join(ROOT, "src", "llama2bin")


def _modules() -> dict[str, str]:
    """Every module of the package by dotted name (a package by its own name) -> its file."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))[: -len(".py")]
                parts = rel.split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return found


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its body (late imports included)."""
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".") if node.level == 0 else \
                package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
            base = ".".join(base)
            # `from . import hf` names a module; `from .layout import F32` names things in one
            bases = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        targets.update(b for b in bases if b in modules and b != module)
    return targets


def _stage(module: str) -> str:
    top = module.split(".")[1] if "." in module else ""
    if top == "__main__":
        return "cli"
    assert top in STAGES or top in FOUNDATION, f"llama2bin.{top} is in no stage: add it to STAGES or FOUNDATION"
    return top


def test_no_module_imports_a_later_stage():
    """The flow is fetch -> sources -> formats -> checks -> report -> cli: no arrow back up, and
    the foundation imports no stage (so sources/ never reaches the reader or writer)."""
    modules = _modules()
    assert {"llama2bin.formats.reader", "llama2bin.cli.verify", "llama2bin.sources.base"} <= set(modules)
    wrong = []
    for module, path in modules.items():
        stage = _stage(module)
        for target in _imports(module, path, modules):
            to = _stage(target)
            if stage in FOUNDATION:
                if to not in FOUNDATION:
                    wrong.append(f"{module} (foundation) imports {target} ({to})")
            elif to not in FOUNDATION and STAGES.index(to) > STAGES.index(stage):
                wrong.append(f"{module} ({stage}) imports {target} ({to}), a later stage")
    assert wrong == []


def test_no_import_cycles():
    modules = _modules()
    graph = {module: _imports(module, path, modules) for module, path in modules.items()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, trail + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_layering_checks_see_a_backward_import(tmp_path, monkeypatch):
    """The checks above are only worth something if they fail: a sources/ module that imports the
    reader, and two modules importing each other, are both caught."""
    fake = tmp_path / "llama2bin"
    for sub in ("sources", "formats"):
        (fake / sub).mkdir(parents=True)
        (fake / sub / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "sources" / "base.py").write_text("def f():\n    from ..formats.reader import BinFile\n")
    (fake / "formats" / "reader.py").write_text("from ..sources import base\n")
    (fake / "cli").mkdir()
    (fake / "cli" / "verify.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(fake))
    with pytest.raises(AssertionError, match=r"llama2bin.sources.base \(sources\) imports llama2bin.formats.reader"):
        test_no_module_imports_a_later_stage()
    with pytest.raises(AssertionError, match="import cycle: llama2bin.formats.reader -> llama2bin.sources.base -> "):
        test_no_import_cycles()
