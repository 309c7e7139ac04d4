"""path: sources used in place, source-spec validation, and hostile checkpoint directories (issue
14): symlink loops, FIFOs and devices are refused at once, never read or followed forever."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from fetch_fixtures import COMMIT, PAYLOAD, PAYLOAD_SHA, SNAP_COMMIT, listing
from hostile_harness import HostileCase, run_hostile

from llama2bin.cli import main
from llama2bin.errors import Llama2binError
from llama2bin.fetch import (
    SOURCE_JSON,
    FetchSpec,
    checkpoint_from_source_json,
    config_source,
    fetch,
)
from llama2bin.formats.source_registry import single_file

# ---- path: used in place --------------------------------------------------------------------

pytest_plugins = ("fetch_plugin",)  # its fixtures: server, hf_cache, hub_env, ...


def test_path_file_and_directory_recorded_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("models/meta")
    with open("models/one.pt", "wb") as f:
        f.write(PAYLOAD)
    with open("models/meta/params.json", "w") as f:
        f.write('{"dim": 8}')
    os.makedirs("models/meta/sub")
    with open("models/meta/sub/consolidated.00.pth", "wb") as f:
        f.write(PAYLOAD[:5000])
    with open("models/meta/.hidden", "w") as f:
        f.write("editor backup")

    result = fetch("one", FetchSpec("path", path="models/one.pt"), quiet=True)
    assert result.checkpoint == "models/one.pt"
    text = open("resources/checkpoints/one/SOURCE.json").read()
    assert str(tmp_path) not in text
    assert json.loads(text) == {
        "model": "one", "kind": "path", "path": "models/one.pt",
        "checkpoint": "../../../models/one.pt",
        "files": [{"path": "one.pt", "sha256": PAYLOAD_SHA, "size": len(PAYLOAD)}],
    }
    assert checkpoint_from_source_json("resources/checkpoints/one/SOURCE.json") == "models/one.pt"
    assert listing("resources/checkpoints/one") == ["SOURCE.json"]  # used in place, not copied

    fetch("meta", FetchSpec("path", path="models/meta"), quiet=True)
    record = json.load(open("resources/checkpoints/meta/SOURCE.json"))
    assert record["files"] == [
        {"path": "params.json", "sha256": hashlib.sha256(b'{"dim": 8}').hexdigest(), "size": 10},
        {"path": "sub/consolidated.00.pth", "sha256": hashlib.sha256(PAYLOAD[:5000]).hexdigest(), "size": 5000},
    ]


def test_missing_path_is_a_one_line_error(tmp_path, capsys):
    code = main(["fetch", "--model", "x", "--dest", str(tmp_path / "d"), "--path", str(tmp_path / "nope.pt")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "nope.pt: no such file or directory" in err
    assert listing(tmp_path / "d") == []


def test_flags_that_do_not_go_with_the_source(tmp_path, capsys):
    assert main(["fetch", "--model", "x", "--path", "p", "--sha256", "0" * 64]) == 1
    assert "sha256 goes with a url source, not a path source" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--url", "https://h/a.pt", "--file", "a.pt"]) == 1
    assert "file goes with a repo source, not a url source" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--url", "https://huggingface.co/org/name/blob/main/a.pt"]) == 1
    assert "not a Hub file download URL" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--repo", "org/name"]) == 1
    assert "needs a revision" in capsys.readouterr().err
    assert main(["fetch", "--model", "x", "--url", "http://user:pw@example.com/a.pt"]) == 1
    assert "credentials" in capsys.readouterr().err
    assert main(["fetch", "--model", "../x", "--path", "p"]) == 1
    assert "model name" in capsys.readouterr().err


def test_spec_from_config_and_cli_args():
    spec = FetchSpec.from_config("s", {"source": "llama2c", "url": "https://h/x/stories15M.pt", "max_seq_len": 256})
    assert spec.checkpoint_path("resources/checkpoints/s") == "resources/checkpoints/s/stories15M.pt"
    assert spec.cli_args() == ["--url", "https://h/x/stories15M.pt"]
    spec = FetchSpec.from_config("t", {"source": "hf", "repo": "Org/Name", "revision": COMMIT, "files": ["*.json"]})
    assert spec.checkpoint_path("d") == "d/snapshot"
    assert spec.cli_args() == ["--repo", "Org/Name", "--revision", COMMIT, "--files", "*.json"]
    with pytest.raises(Llama2binError, match="exactly one of"):
        FetchSpec.from_config("u", {"source": "hf", "repo": "Org/Name", "path": "x"})
    with pytest.raises(Llama2binError, match="sha256 must be"):
        FetchSpec.from_config("u", {"source": "llama2c", "url": "https://h/x.pt", "sha256": "ABC"})


# ---- path: hostile directories (issue 14: nothing hangs, only regular files are read) -------


def checkpoint_dir(root) -> str:
    """A plausible Meta-style directory the hostile cases then spoil."""
    folder = root / "ckpt"
    folder.mkdir()
    (folder / "params.json").write_text('{"dim": 8}')
    (folder / "consolidated.00.pth").write_bytes(PAYLOAD[:4096])
    return str(folder)


def _loop_to_parent(folder: str) -> None:
    os.makedirs(os.path.join(folder, "sub"))
    os.symlink("..", os.path.join(folder, "sub", "up"))  # sub/up/sub/up/... forever if followed


def _loop_of_links(folder: str) -> None:
    os.symlink("b", os.path.join(folder, "a"))
    os.symlink("a", os.path.join(folder, "b"))


def _fifo_inside(folder: str) -> None:
    os.mkfifo(os.path.join(folder, "tokenizer.model"))


def _dev_zero_inside(folder: str) -> None:
    os.symlink("/dev/zero", os.path.join(folder, "consolidated.01.pth"))


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (_loop_to_parent, "sub/up: symlink loop (leads back to a directory that contains it)"),
        (_loop_of_links, "symlink loop"),
        (_fifo_inside, "tokenizer.model: is a FIFO (named pipe); a checkpoint file must be a regular file"),
        (_dev_zero_inside, "consolidated.01.pth: is a character device; a checkpoint file must be a regular file"),
    ],
    ids=["symlink-to-parent", "symlinks-to-each-other", "fifo", "dev-zero"],
)
def test_hostile_checkpoint_directory_is_refused_at_once(tmp_path, spoil, needle):
    folder = checkpoint_dir(tmp_path)
    spoil(folder)
    dest = tmp_path / "dest"
    run_hostile(HostileCase(
        name=spoil.__name__, argv=["fetch", "--model", "m", "--dest", str(dest), "--path", folder, "--quiet"],
        inputs=[folder], outputs=[str(dest / SOURCE_JSON)], needle=needle, timeout=30,
    ))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "self-link"])
def test_hostile_checkpoint_file_is_refused_at_once(tmp_path, kind):
    target = str(tmp_path / "model.pt")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", target)
    else:
        os.symlink("model.pt", target)
    dest = tmp_path / "dest"
    needle = {"fifo": "is a FIFO", "dev-zero": "is a character device", "self-link": "Too many levels of symbolic links"}[kind]
    run_hostile(HostileCase(
        name=kind, argv=["fetch", "--model", "m", "--dest", str(dest), "--path", target, "--quiet"],
        inputs=[target], outputs=[str(dest / SOURCE_JSON)], needle=needle, timeout=30,
    ))


def test_symlinked_files_and_directories_without_loops_are_walked(tmp_path):
    """What the loop guard must not refuse: a symlink to a file (the Hugging Face cache is made of
    them) and a symlinked directory reached twice without a cycle."""
    folder = checkpoint_dir(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tokenizer.model").write_bytes(b"spm")
    os.symlink(str(shared / "tokenizer.model"), os.path.join(folder, "tokenizer.model"))
    os.symlink(str(shared), os.path.join(folder, "extra"))
    result = fetch("m", FetchSpec("path", path=folder), str(tmp_path / "dest"), quiet=True)
    assert [f["path"] for f in result.record["files"]] == [
        "consolidated.00.pth", "extra/tokenizer.model", "params.json", "tokenizer.model"]


def test_config_source_is_the_pipelines_one_check():
    assert config_source("d", {"source": "llama2c", "demo": "mha"}) is None
    assert config_source("p", {"source": "llama2c", "path": "m.pt"}) == FetchSpec("path", path="m.pt")
    with pytest.raises(Llama2binError, match=r"give exactly one of path, url \(\+sha256\), repo \(\+revision\) or demo; "
                                             r"got \['path', 'demo'\]"):
        config_source("x", {"source": "llama2c", "path": "m.pt", "demo": "mha"})
    with pytest.raises(Llama2binError, match="model x: a bin checkpoint is one file"):
        config_source("x", {"source": "bin", "repo": "Org/Llamas", "revision": SNAP_COMMIT}, single_file("bin"))


BAD_SOURCES = [
    ({"source": "llama2c", "url": "ftp://h/m.pt"}, "is not an http(s) URL"),
    ({"source": "llama2c", "url": "https://h/m.pt", "sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
    ({"source": "hf", "repo": "no-slash", "revision": "main"}, "repo must look like ORG/NAME"),
    ({"source": "llama2c", "repo": "O/N", "revision": "main", "file": "*.pt"}, "file must be one file's path"),
]


@pytest.mark.parametrize("entry, needle", BAD_SOURCES)
def test_bad_sources_are_refused_by_config_source(entry, needle):
    with pytest.raises(Llama2binError, match=re.escape(needle)):
        config_source("m", entry)


@pytest.mark.slow
@pytest.mark.parametrize("entry, needle", BAD_SOURCES)
def test_pipeline_refuses_bad_sources_with_fetchs_words(tmp_path, entry, needle):
    """The pipeline validates a source with FetchSpec (config_source in common.smk), so its
    message is the one `llama2bin fetch` gives, before anything runs."""
    import yaml
    from conftest import snakemake, workflow_copy

    workdir = workflow_copy(tmp_path / "w")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"models": {"m": entry}, "versions": [0]}))
    proc = snakemake(workdir, "-n", "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0 and "model m: " in proc.stdout + proc.stderr
    assert needle in proc.stdout + proc.stderr
