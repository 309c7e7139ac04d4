"""Hugging Face sources through huggingface_hub: /resolve/ URLs against a fake Hub endpoint on
127.0.0.1, and repo snapshots (whole, by patterns, or one file) from offline caches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket

import pytest
from fetch_fixtures import (
    COMMIT,
    CUT,
    HF_FILES,
    LLAMA2C_REPO_FILES,
    PAYLOAD,
    PAYLOAD_SHA,
    SNAP_COMMIT,
    TOKEN,
    hub_url,
    listing,
    make_hf_cache,
)
from helpers import DATA, ROOT

from llama2bin.cli import main
from llama2bin.errors import Llama2binError
from llama2bin.fetch import (
    SOURCE_JSON,
    FetchSpec,
    checkpoint_from_source_json,
    fetch,
)
from llama2bin.formats.source_registry import single_file

pytest_plugins = ("fetch_plugin",)  # its fixtures: server, hf_cache, hub_env, ...


def test_hub_url_goes_through_huggingface_hub(server, hub_env, tmp_path, capsys):
    """A /resolve/ URL on the Hub endpoint: the token goes to the Hub only, not to the CDN host
    it redirects to; the commit the branch resolved to is recorded; the token is nowhere."""
    dest = tmp_path / "d"
    result = fetch("stories", FetchSpec("url", url=hub_url(server), sha256=PAYLOAD_SHA), str(dest), quiet=True,
                   hf_endpoint=hub_env)
    hub_requests = [h for p, h in server.requests if "/resolve/" in p]
    cdn_requests = server.seen("files")
    assert hub_requests and all(h["authorization"] == f"Bearer {TOKEN}" for h in hub_requests)
    assert cdn_requests and all(h["host"].startswith("localhost") and "authorization" not in h for h in cdn_requests)
    assert (dest / "stories.pt").read_bytes() == PAYLOAD
    assert listing(dest) == ["SOURCE.json", "stories.pt"]  # no temporary link left behind
    record = json.loads((dest / SOURCE_JSON).read_text())
    assert record == {
        "model": "stories", "kind": "url", "url": hub_url(server), "revision": COMMIT, "sha256_pinned": True,
        "checkpoint": "stories.pt", "files": [{"path": "stories.pt", "sha256": PAYLOAD_SHA, "size": len(PAYLOAD)}],
    }
    assert result.checkpoint == str(dest / "stories.pt")
    out, err = capsys.readouterr()
    assert TOKEN not in out + err + (dest / SOURCE_JSON).read_text()
    # In the library's cache, named by the sha256 the Hub announced; DEST holds a hard link to it.
    blob = tmp_path / "hf-cache" / "models--Org--Tiny" / "blobs" / PAYLOAD_SHA
    assert os.path.samefile(blob, dest / "stories.pt")
    # Again: the verified file in DEST is reused without asking anyone.
    before = len(server.requests)
    assert fetch("stories", FetchSpec("url", url=hub_url(server), sha256=PAYLOAD_SHA), str(dest), quiet=True,
                 hf_endpoint=hub_env).reused
    assert len(server.requests) == before
    assert json.loads((dest / SOURCE_JSON).read_text()) == record


def test_hub_url_checksums_before_the_final_name(server, hub_env, tmp_path):
    """A wrong sha256 announced by the Hub (the blob's name) or pinned by the user: refused,
    nothing in DEST."""
    warnings: list[str] = []
    with pytest.raises(Llama2binError, match=f"damaged \\(content hash {PAYLOAD_SHA}, expected {'0' * 64}\\)"):
        fetch("stories", FetchSpec("url", url=hub_url(server, "Org/Bad")), str(tmp_path / "e"), quiet=True,
              hf_endpoint=hub_env, warn=warnings.append)
    assert listing(tmp_path / "e") == []
    with pytest.raises(Llama2binError, match=f"expected sha256 {'1' * 64}, got {PAYLOAD_SHA}.*nothing was written"):
        fetch("stories", FetchSpec("url", url=hub_url(server), sha256="1" * 64), str(tmp_path / "f"), quiet=True,
              hf_endpoint=hub_env)
    assert listing(tmp_path / "f") == []


def test_hub_url_retries_a_dropped_transfer(server, hub_env, tmp_path, monkeypatch, library_sleeps):
    """The CDN drops the connection after CUT bytes: huggingface_hub retries within the run,
    asking with Range for what it already holds in whole download chunks (10 MiB; shrunk here
    so this file spans several), and the result is checked before it reaches DEST."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CUT // 4)
    dest = tmp_path / "d"
    fetch("stories", FetchSpec("url", url=hub_url(server, "Org/Cut"), sha256=PAYLOAD_SHA), str(dest), quiet=True,
          hf_endpoint=hub_env)
    first, second = server.seen("cut")
    assert "range" not in first and second["range"] == f"bytes={CUT}-"
    assert library_sleeps == [1]  # the library's pause before resuming, recorded, not waited for
    assert (dest / "stories.pt").read_bytes() == PAYLOAD


def test_hub_url_gated_without_token_is_one_line(server, hub_env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_ENDPOINT", hub_env)  # as a user with a mirror would: the CLI reads it
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no login cache either
    code = main(["fetch", "--model", "stories", "--dest", str(tmp_path / "d"), "--url", hub_url(server), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "gated repo" in err and "HF_TOKEN" in err
    assert listing(tmp_path / "d") == []


def test_hf_snapshot_offline_from_cache(hf_cache, tmp_path, capsys):
    dest = tmp_path / "ck" / "tiny"
    code = main(["fetch", "--model", "tiny", "--dest", str(dest), "--repo", "Org/Tiny", "--revision", SNAP_COMMIT,
                 "--files", "*.safetensors", "*.json", "tokenizer.model", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""  # pinned commit: no warning
    chosen = ["config.json", "model.safetensors", "original/params.json", "tokenizer.model"]  # not README.md
    snapshot = dest / "snapshot"
    for rel in chosen:
        assert (snapshot / rel).read_bytes() == HF_FILES[rel]
        assert not (snapshot / rel).is_symlink()
    assert os.path.samefile(snapshot / "model.safetensors", hf_cache / "blobs" / PAYLOAD_SHA)  # hard link, no copy
    assert not (snapshot / "README.md").exists()
    assert listing(dest) == ["SOURCE.json", "snapshot"]
    text = (dest / SOURCE_JSON).read_text()
    assert str(tmp_path) not in text
    assert json.loads(text) == {
        "model": "tiny", "kind": "repo", "repo": "Org/Tiny", "revision": SNAP_COMMIT, "commit": SNAP_COMMIT,
        "files_patterns": ["*.safetensors", "*.json", "tokenizer.model"],
        "checkpoint": "snapshot",
        "files": [{"path": rel, "sha256": hashlib.sha256(HF_FILES[rel]).hexdigest(), "size": len(HF_FILES[rel])}
                  for rel in chosen],
    }
    assert f"tiny: {snapshot} (ok; 4 files" in out

    # Again: same record, and the snapshot directory is replaced, not merged.
    (snapshot / "stray").write_text("left over")
    assert main(["fetch", "--model", "tiny", "--dest", str(dest), "--repo", "Org/Tiny", "--revision", SNAP_COMMIT,
                 "--files", "*.safetensors", "*.json", "tokenizer.model", "--quiet"]) == 0
    assert (dest / SOURCE_JSON).read_text() == text
    assert not (snapshot / "stray").exists()
    assert [n for n in listing(dest) if n.startswith(".")] == []


def test_hf_branch_resolves_through_refs_and_warns_to_pin(hf_cache, tmp_path):
    warnings: list[str] = []
    result = fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision="main"), str(tmp_path / "d"), quiet=True,
                   warn=warnings.append)
    assert result.record["commit"] == SNAP_COMMIT and result.record["revision"] == "main"
    assert [p["path"] for p in result.record["files"]] == sorted(HF_FILES)  # no patterns: the whole snapshot
    assert len(warnings) == 1 and f"revision: {SNAP_COMMIT}" in warnings[0]


def test_hf_offline_miss_says_how_to_fetch(hf_cache, tmp_path, capsys):
    code = main(["fetch", "--model", "other", "--dest", str(tmp_path / "d"), "--repo", "Org/Other",
                 "--revision", SNAP_COMMIT, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=1" in err
    assert "run once with network, or set HF_HUB_OFFLINE=0" in err
    assert listing(tmp_path / "d") == []


def test_hf_pattern_matching_nothing_is_refused(hf_cache, tmp_path):
    with pytest.raises(Llama2binError, match=r"'\*\.bin' matches no file .*run once with network"):
        fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT, files=("*.bin",)), str(tmp_path / "d"),
              quiet=True)
    assert listing(tmp_path / "d") == []


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json"])  # sha256-named and git-id-named blobs
def test_hf_damaged_cache_blob_is_caught(hf_cache, tmp_path, damaged):
    blob = os.path.realpath(hf_cache / "snapshots" / SNAP_COMMIT / damaged)
    data = bytearray(open(blob, "rb").read())
    data[5] ^= 0xFF
    os.chmod(blob, 0o644)
    with open(blob, "wb") as f:
        f.write(data)
    with pytest.raises(Llama2binError, match=f"{damaged}: the cached blob .* is damaged"):
        fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT), str(tmp_path / "d"), quiet=True)
    assert listing(tmp_path / "d") == []


def test_hf_unreachable_hub_falls_back_to_the_cache(hf_cache, tmp_path, monkeypatch, library_sleeps):
    """Not offline, but the Hub cannot be reached (a closed local port): the cached snapshot of a
    pinned commit is used; an uncached repo gets a message about the network (after the
    library's retries, whose delays are recorded, not waited for)."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT, files=("config.json",)),
                   str(tmp_path / "d"), quiet=True, hf_endpoint=dead)
    assert [f["path"] for f in result.record["files"]] == ["config.json"]
    with pytest.raises(Llama2binError, match="cannot reach the Hugging Face Hub"):
        fetch("other", FetchSpec("repo", repo="Org/Other", revision=SNAP_COMMIT), str(tmp_path / "e"), quiet=True,
              hf_endpoint=dead)
    assert library_sleeps  # it did retry


# ---- Hub sources for every kind (issue 12): a file URL offline, a repo's single file ------------


def test_hub_url_offline_from_the_cache(hf_cache, tmp_path):
    """A huggingface.co /resolve/ URL goes through huggingface_hub, so HF_HUB_OFFLINE=1 re-runs
    work from its cache: a pinned commit directly, a branch through refs/."""
    for revision in (SNAP_COMMIT, "main"):
        dest = tmp_path / revision
        url = f"https://huggingface.co/Org/Tiny/resolve/{revision}/model.safetensors"
        result = fetch("tiny", FetchSpec("url", url=url, sha256=PAYLOAD_SHA), str(dest), quiet=True)
        assert result.record["revision"] == SNAP_COMMIT
        assert (dest / "model.safetensors").read_bytes() == PAYLOAD
        assert os.path.samefile(dest / "model.safetensors", hf_cache / "blobs" / PAYLOAD_SHA)
    with pytest.raises(Llama2binError, match="not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        fetch("tiny", FetchSpec("url", url="https://huggingface.co/Org/Tiny/resolve/main/other.pt"),
              str(tmp_path / "x"), quiet=True, warn=lambda m: None)
    assert listing(tmp_path / "x") == []




@pytest.mark.parametrize("name, source", [("tiny_a.pt", "llama2c"), ("tiny_a.v0.bin", "bin")])
def test_repo_file_is_the_checkpoint(llama2c_repo, tmp_path, name, source):
    dest = tmp_path / "m"
    spec = FetchSpec.from_config("m", {"source": source, "repo": "Org/Llamas", "revision": SNAP_COMMIT, "file": name})
    assert spec.checkpoint_path(str(dest)) == str(dest / "snapshot" / name)  # known before the fetch
    assert spec.cli_args() == ["--repo", "Org/Llamas", "--revision", SNAP_COMMIT, "--file", name]
    result = fetch("m", spec, str(dest), quiet=True)
    assert result.checkpoint == str(dest / "snapshot" / name)
    assert checkpoint_from_source_json(str(dest / SOURCE_JSON)) == result.checkpoint
    assert os.listdir(dest / "snapshot") == [name]  # only the named file, not the rest of the repo
    record = json.loads((dest / SOURCE_JSON).read_text())
    assert record["checkpoint"] == f"snapshot/{name}" and record["file"] == name
    assert record["files"] == [{"path": name, "sha256": hashlib.sha256(LLAMA2C_REPO_FILES[name]).hexdigest(),
                                "size": len(LLAMA2C_REPO_FILES[name])}]


def test_llama2c_checkpoint_fetched_from_a_repo_converts_to_the_golden_bytes(llama2c_repo, tmp_path):
    out = tmp_path / "out.v2.bin"
    assert main(["fetch", "--model", "m", "--dest", str(tmp_path / "m"), "--repo", "Org/Llamas",
                 "--revision", SNAP_COMMIT, "--file", "tiny_a.pt", "--quiet"]) == 0
    assert main(["export", str(out), "--checkpoint", str(tmp_path / "m" / "snapshot" / "tiny_a.pt"),
                 "--version", "2"]) == 0
    assert out.read_bytes() == open(os.path.join(DATA, "tiny_a.v2.bin"), "rb").read()


def test_repo_file_rules():
    """A one-file source kind (the source registry says which) names its file in the repo; a
    directory kind takes the snapshot."""
    base = {"repo": "Org/Llamas", "revision": SNAP_COMMIT}
    with pytest.raises(Llama2binError, match="a llama2c checkpoint is one file: name it inside the repo with file:"):
        FetchSpec.from_config("m", {"source": "llama2c", **base, "files": ["*.pt"]}, single_file("llama2c"))
    with pytest.raises(Llama2binError, match="a hf checkpoint is the snapshot directory: use files:"):
        FetchSpec.from_config("m", {"source": "hf", **base, "file": "model.safetensors"}, single_file("hf"))
    for bad in ("*.pt", "../x.pt", ".hidden.pt", "/abs.pt"):
        with pytest.raises(Llama2binError, match="file must be one file's path inside the repo"):
            FetchSpec.from_config("m", {"source": "llama2c", **base, "file": bad}, single_file("llama2c"))
    spec = FetchSpec.from_config("m", {"source": "hf", **base, "files": ["*.json", "tokenizer.model"]})
    assert spec.snapshot_tokenizer("d") == os.path.join("d", "snapshot", "tokenizer.model")
    assert FetchSpec.from_config("m", {"source": "hf", **base, "files": ["*"]}).snapshot_tokenizer("d") is None
    assert FetchSpec.from_config("m", {"source": "hf", **base}).snapshot_tokenizer("d") is None


def test_repo_file_missing_from_the_snapshot(llama2c_repo, tmp_path):
    with pytest.raises(Llama2binError, match="file 'stories15M.pt' matches no file of the snapshot"):
        fetch("m", FetchSpec("repo", repo="Org/Llamas", revision=SNAP_COMMIT, file="stories15M.pt"),
              str(tmp_path / "m"), quiet=True)
    assert listing(tmp_path / "m") == []


@pytest.mark.slow
def test_pipeline_converts_hub_sources_of_every_kind_offline(tmp_path, monkeypatch):
    """Snakemake from an offline Hugging Face cache: an HF snapshot whose files: name
    tokenizer.model gives tokenizer.bin (as a local directory would), and a llama2.c .pt named by
    file: in another repo converts, and so does a llama2.c v0 .bin (source: bin) named by file:;
    all byte-identical to the golden files."""
    from conftest import snakemake, workflow_copy
    from test_pipeline import _train_tokenizer

    tokenizer = open(_train_tokenizer(tmp_path, 64), "rb").read()
    hf_dir = os.path.join(DATA, "tiny_hf_untied")
    hf_files = {name: open(os.path.join(hf_dir, name), "rb").read() for name in os.listdir(hf_dir)}
    cache = tmp_path / "hf-cache"
    make_hf_cache(cache, "Org/Hf", SNAP_COMMIT, {**hf_files, "tokenizer.model": tokenizer, "README.md": b"card"},
                  lfs={"model.safetensors", "tokenizer.model"})
    make_hf_cache(cache, "Org/Llamas", SNAP_COMMIT, LLAMA2C_REPO_FILES, lfs={"tiny_a.pt", "tiny_a.v0.bin"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    workdir = workflow_copy(tmp_path / "w")
    (tmp_path / "c.yaml").write_text(
        "models:\n"
        f"  h: {{source: hf, repo: Org/Hf, revision: {SNAP_COMMIT},"
        " files: [config.json, model.safetensors, tokenizer.model]}\n"
        f"  a: {{source: llama2c, repo: Org/Llamas, revision: {SNAP_COMMIT}, file: tiny_a.pt}}\n"
        f"  b: {{source: bin, repo: Org/Llamas, revision: {SNAP_COMMIT}, file: tiny_a.v0.bin}}\n"
        "versions: [2]\n")
    proc = snakemake(workdir, "results/h/h.v2.bin", "results/h/tokenizer.bin", "results/a/a.v2.bin",
                     "results/b/b.v2.bin", "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a v0 .bin -> v2 equals the v2 of the checkpoint it was exported from (issue 12)
    for got, golden in (("results/h/h.v2.bin", "tiny_hf_untied.v2.bin"), ("results/a/a.v2.bin", "tiny_a.v2.bin"),
                        ("results/b/b.v2.bin", "tiny_a.v2.bin")):
        assert open(os.path.join(workdir, got), "rb").read() == open(os.path.join(DATA, golden), "rb").read(), got
    with open(os.path.join(workdir, "results/h/tokenizer.bin"), "rb") as f:
        assert int.from_bytes(f.read(4), "little") > 0  # max_token_length; the format is tested in test_tokenizer
    assert not os.path.exists(os.path.join(workdir, "resources/checkpoints/h/snapshot/README.md"))


def test_config_examples_name_valid_sources():
    """Every shipped example passes the pipeline's schema and FetchSpec, and stories15M is there
    both as a .pt by URL and as the published .bin by repo + file, converted to v2."""
    import yaml
    from snakemake.utils import validate

    folder = os.path.join(ROOT, "config", "examples")
    examples = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            config = yaml.safe_load(f)
        validate(config, os.path.join(ROOT, "workflow", "schemas", "config.schema.yaml"))
        for model, entry in config["models"].items():
            examples[model] = (FetchSpec.from_config(model, entry, single_file(entry["source"])), entry["source"],
                               config["versions"])
    spec, source, versions = examples["stories15M-bin"]
    assert (source, spec.repo, spec.file, versions) == ("bin", "karpathy/tinyllamas", "stories15M.bin", [2])
    assert examples["stories15M"][0].hub_file() is not None  # through huggingface_hub


def test_cache_on_another_file_system_is_copied(hf_cache, tmp_path, monkeypatch, caplog):
    """os.link fails across file systems (EXDEV): the files are copied instead, still whole
    before they get their names, and the run says so."""
    import errno

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    caplog.set_level(logging.INFO, logger="llama2bin")
    url = f"https://huggingface.co/Org/Tiny/resolve/{SNAP_COMMIT}/model.safetensors"
    fetch("tiny", FetchSpec("url", url=url, sha256=PAYLOAD_SHA), str(tmp_path / "u"))
    fetch("tiny", FetchSpec("repo", repo="Org/Tiny", revision=SNAP_COMMIT, files=("*.json",)), str(tmp_path / "r"))
    notes = caplog.text  # the library logs its notes; the CLI shows them
    assert (tmp_path / "u" / "model.safetensors").read_bytes() == PAYLOAD
    assert not os.path.samefile(tmp_path / "u" / "model.safetensors", hf_cache / "blobs" / PAYLOAD_SHA)
    assert (tmp_path / "r" / "snapshot" / "config.json").read_bytes() == HF_FILES["config.json"]
    assert "copied 1 file(s)" in notes and "copied 2 file(s)" in notes
    assert sorted(os.listdir(tmp_path / "u")) == ["SOURCE.json", "model.safetensors"]


@pytest.mark.slow  # transformers is imported by the checkpoint builders
def test_meta_layout_snapshot_converts_like_the_local_directory(hf_cache, tmp_path):
    """A repo holding Meta's layout (params.json + consolidated.NN.pth, as meta-llama/Llama-2-7b
    does): the fetched snapshot exports byte for byte what the same files on disk export."""
    from llama_checkpoints import Spec, save_meta

    local = save_meta(Spec(), str(tmp_path / "meta"), 2)
    files = {name: open(os.path.join(local, name), "rb").read() for name in sorted(os.listdir(local))}
    make_hf_cache(hf_cache.parent, "Org/Meta", SNAP_COMMIT, {**files, "README.md": b"card"},
                  lfs={n for n in files if n.endswith(".pth")})
    assert main(["fetch", "--model", "meta", "--dest", str(tmp_path / "m"), "--repo", "Org/Meta", "--revision",
                 SNAP_COMMIT, "--files", "params.json", "consolidated.*.pth", "--quiet"]) == 0
    snapshot = tmp_path / "m" / "snapshot"
    assert sorted(os.listdir(snapshot)) == sorted(files)
    for name, source in (("from-snapshot", str(snapshot)), ("from-disk", local)):
        assert main(["export", str(tmp_path / f"{name}.v0.bin"), "--meta-llama", source, "--max-seq-len", "16",
                     "--version", "0"]) == 0
    assert (tmp_path / "from-snapshot.v0.bin").read_bytes() == (tmp_path / "from-disk.v0.bin").read_bytes()
