"""What the tests share: one way to see a refusal, one way to run Snakemake, one checkpoint factory.

- `assert_refused(proc, *needles, leaves=DIR)`: a refusal as a user sees it (README: "Bad input
  gets one line"), from a subprocess (`helpers.run_cli`) or an in-process run (`run_main`).
- `workflow_copy(dest)` and `snakemake(workdir, *args)`: the pipeline, run as a user runs it, in
  a fresh copy of the workflow.
- the `checkpoint` fixture: `checkpoint(kind)` makes a small checkpoint of any registered source
  kind from the same seeded weights (llama2c, meta, hf, bin), so a test can name the kind it needs.

Tests import the functions (`from conftest import assert_refused`); pytest puts tests/ on the path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import pytest
from helpers import DATA, ROOT, preset_args, preset_arrays

from llama2bin import torch_cpu_trig

# Tests compare llama2bin's v0 rope tables with torch's cos/sin. On an x86-64 CPU that is not
# Intel's, llama2bin makes MKL take its Intel code paths (torch_cpu_trig.py); torch's own MKL must
# take them too, or it computes other bits than the seed on Intel (the golden files): so the
# library that does it is loaded here, before any test module imports torch. Built into a
# directory of its own, not the user's cache (a loaded library needs no file: removed at once).
_intel_paths_cache = tempfile.mkdtemp(prefix="llama2bin-test-mkl-")
try:
    with contextlib.suppress(OSError):  # no compiler: the v0 tests say why when they run
        torch_cpu_trig.load_intel_code_paths(cache=_intel_paths_cache)
finally:
    shutil.rmtree(_intel_paths_cache, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _private_consumer_cache(tmp_path_factory: pytest.TempPathFactory):
    """Compiled C consumers go to a cache of the test session's own (inherited by subprocesses and
    Snakemake jobs), not the user's ~/.cache."""
    old = os.environ.get("LLAMA2BIN_CACHE_DIR")
    os.environ["LLAMA2BIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("llama2bin-cache"))
    yield
    if old is None:
        os.environ.pop("LLAMA2BIN_CACHE_DIR", None)
    else:
        os.environ["LLAMA2BIN_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def consumer():  # type: ignore[no-untyped-def]
    """llama2bin's C consumer, built once per test module (into the session's cache); the test is
    skipped without a C compiler."""
    from llama2bin.checks.ccheck import Consumer, find_compiler

    compiler = find_compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc or $CC): the C consumer check is skipped")
    with Consumer(compiler) as built:
        yield built


# ---- refusals ---------------------------------------------------------------------------------


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """`llama2bin ARGV` in this process (faster than a subprocess; capsys captures its output)."""
    from llama2bin.cli import main

    capsys.readouterr()  # drop what building the inputs printed
    rc = main(argv)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, rc, out.out, out.err)


def assert_refused(proc: subprocess.CompletedProcess, *needles: str, leaves: str | os.PathLike | None = None) -> str:
    """A non-zero exit, exactly one `llama2bin: error:` line and it is the last line on stderr
    (notes such as BACKOFF and per-file FAILED lines may come before it), no traceback, every
    needle in that line; with `leaves`, no file at all (final or partial) left in that folder.
    Returns the error line."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("llama2bin: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    if leaves is not None:
        left = sorted(os.listdir(leaves)) if os.path.isdir(leaves) else []
        assert left == [], left
    return errors[0]


def export(folder: str | os.PathLike, flag: str, source: str, *versions: str, extra: tuple[str, ...] = ()) -> list[str]:
    """`llama2bin export` in this process from `flag source`, each version under the name the
    pipeline gives it (out.v2.bin, hf) in `folder`; it must succeed. Returns the outputs."""
    from llama2bin.cli import main
    from llama2bin.formats import format_spec

    outs = [os.path.join(folder, format_spec(v).output_name("out")) for v in versions]
    assert main(["export", *outs, flag, source, "--version", *versions, "--quiet", *extra]) == 0
    return outs


# ---- the pipeline -------------------------------------------------------------------------------

WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "profiles")


def workflow_copy(dest: str | os.PathLike, config: dict | str | None = None) -> str:
    """A fresh copy of the workflow in `dest`; with `config`, also `dest/c.yaml` (a dict is
    written as JSON, which is YAML without any quoting of ours)."""
    os.makedirs(dest)
    for name in WORKFLOW_FILES:
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(dest, name))
    if config is not None:
        with open(os.path.join(dest, "c.yaml"), "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
    return str(dest)


def snakemake_argv(*args: str, cores: int | None = 4) -> list[str]:
    """The command line of `snakemake --cores N ARGS` (no --cores with cores=None: a profile's)."""
    return [sys.executable, "-m", "snakemake", *(["--cores", str(cores)] if cores else []), *args]


def snakemake(workdir: str | os.PathLike, *args: str, cores: int | None = 4, **run: object) -> subprocess.CompletedProcess:
    """`snakemake --cores N ARGS` in `workdir`, as its own process (stdout and stderr captured;
    `run` goes to subprocess.run: env, timeout). Add "--configfile", "c.yaml" for a config written
    by workflow_copy."""
    return subprocess.run(snakemake_argv(*args, cores=cores), cwd=workdir, capture_output=True, text=True,
                          **run)  # type: ignore[call-overload]


# ---- checkpoints --------------------------------------------------------------------------------


def _llama2c(path: str, preset: str, changes: dict) -> str:
    from helpers import save_llama2c

    args = preset_args(preset) | {k: v for k, v in changes.items() if k in ("dim", "n_layers", "n_heads",
                                                                            "n_kv_heads", "vocab_size")}
    return save_llama2c(path, preset_arrays(preset, **changes), args)


def _meta(path: str, preset: str, changes: dict) -> str:
    """One consolidated shard (Meta's own names: llama2.c's) and params.json."""
    import torch

    os.makedirs(path)
    arrays = preset_arrays(preset, **changes)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, os.path.join(path, "consolidated.00.pth"))
    args = preset_args(preset)
    params = {k: args[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")}
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(params | {"norm_eps": 1e-5, "multiple_of": args["multiple_of"]}, f)
    return path


def _hf(path: str, preset: str, changes: dict) -> str:
    """The checked-in Hugging Face directory (safetensors, untied, written by transformers)."""
    if preset != "mha" or changes:
        raise ValueError("the hf checkpoint is tests/data/tiny_hf_untied only")
    shutil.copytree(os.path.join(DATA, "tiny_hf_untied"), path)
    return path


def _bin(path: str, preset: str, changes: dict) -> str:
    from llama2bin.cli import main

    version = changes.pop("version", "2")
    ckpt = _llama2c(path + ".pt", preset, changes)
    assert main(["export", path, "--checkpoint", ckpt, "--version", str(version), "--quiet"]) == 0
    os.remove(ckpt)
    return path


def _gguf(path: str, preset: str, changes: dict) -> str:
    from llama2bin.cli import main

    version = changes.pop("version", "gguf-f16")
    ckpt = _llama2c(path + ".pt", preset, changes)
    assert main(["export", path, "--checkpoint", ckpt, "--version", str(version), "--quiet"]) == 0
    os.remove(ckpt)
    return path


_MAKERS: dict[str, Callable[[str, str, dict], str]] = {"llama2c": _llama2c, "meta": _meta, "hf": _hf, "bin": _bin,
                                                       "gguf": _gguf}


@dataclasses.dataclass
class CheckpointFactory:
    folder: str

    def __call__(self, kind: str, name: str | None = None, *, preset: str = "mha", **changes: object) -> str:
        """A small checkpoint of source kind `kind` (a registered one: llama2c, meta, hf, bin, gguf)
        in the test's folder; `preset` and `changes` pick the demo preset's shape (llama2bin.demo);
        a bin checkpoint takes version= (default 2), a gguf one version= (default gguf-f16)."""
        suffix = {"llama2c": ".pt", "bin": ".bin", "gguf": ".gguf"}.get(kind, "")
        path = os.path.join(self.folder, (name or f"{kind}-{preset}") + suffix)
        return _MAKERS[kind](path, preset, dict(changes))


@pytest.fixture
def checkpoint(tmp_path) -> CheckpointFactory:  # type: ignore[no-untyped-def]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    return CheckpointFactory(str(folder))


def every_kind_config(checkpoint: CheckpointFactory) -> dict:
    """A pipeline config with one model per registered source kind (named after it), each written
    as v2 only, without the functional and C checks: the cheapest run that touches every kind."""
    from llama2bin.formats.source_registry import SOURCES

    models = {kind: {"source": kind, "path": checkpoint(kind)} for kind in SOURCES}
    return {"models": models, "versions": [2], "functional": {"enabled": False}, "c_check": {"enabled": False}}


def registered_source_kinds() -> list[str]:
    """The kinds the factory makes: every registered source kind (tests/test_registry.py checks it)."""
    return list(_MAKERS)
