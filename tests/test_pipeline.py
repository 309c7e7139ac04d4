"""The Snakemake pipeline end to end on the shipped default config, in clean directories."""

import filecmp
import json
import os
import shutil

import pytest
from conftest import snakemake, workflow_copy
from helpers import ROOT, SHELL_SYNTAX, pwned

pytestmark = pytest.mark.slow  # runs Snakemake on real configs

@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    workdir = workflow_copy(tmp_path_factory.mktemp("run") / "a")
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_default_config_converts_verifies_and_reports(default_run):
    summary = json.load(open(os.path.join(default_run, "reports", "summary.json")))["files"]
    assert {(r["model"], r["version"]) for r in summary} == {
        (m, v) for m in ("demo-mha", "demo-gqa", "demo-untied") for v in (0, 1, 2)
    }
    assert all(r["verified"] for r in summary)
    for r in summary:
        bin_path = os.path.join(default_run, "results", r["model"], r["file"])
        assert os.path.getsize(bin_path) == r["size"]
        assert os.path.exists(os.path.join(default_run, "logs", "export", f"{r['model']}.log"))
        assert os.path.exists(os.path.join(default_run, "benchmarks", "export", f"{r['model']}.tsv"))
    gqa = json.load(open(os.path.join(default_run, "reports", "demo-gqa", "demo-gqa.v2.json")))
    assert gqa["group_size"] == 16  # dim 48 backs off 64 -> 16
    untied = json.load(open(os.path.join(default_run, "reports", "demo-untied", "demo-untied.v0.json")))
    assert untied["header"]["shared_classifier"] is False


def test_tracked_reports_are_what_a_fresh_run_produces(default_run):
    """reports/ in the repository is reproduced byte for byte: no timestamps, no absolute paths."""
    tracked = os.path.join(ROOT, "reports")
    fresh = os.path.join(default_run, "reports")
    cmp = filecmp.dircmp(tracked, fresh)
    names = []
    for d, sub in [("", cmp)] + [(k, v) for k, v in cmp.subdirs.items()]:
        assert not sub.left_only and not sub.right_only, (d, sub.left_only, sub.right_only)
        names += [os.path.join(d, f) for f in sub.common_files]
    match, mismatch, errors = filecmp.cmpfiles(tracked, fresh, names, shallow=False)
    assert not mismatch and not errors
    assert str(default_run) not in open(os.path.join(fresh, "summary.md")).read()


def test_second_clean_run_is_byte_identical(default_run, tmp_path):
    """... and the first ran its jobs in the job server's workers, the second each in its own
    Python (job_server: false): the server changes nothing a job writes."""
    other = workflow_copy(tmp_path / "b")
    proc = snakemake(other, "--config", "job_server=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = open(os.path.join(default_run, "logs", "job_server.tsv")).read().splitlines()
    jobs = sum(len(files) for _, _, files in os.walk(os.path.join(default_run, "benchmarks")))
    # one worker per job (the header line aside), but for jobs that started before the server
    # listened (onstart does not wait for it): at most the first wave, --cores 4
    assert jobs - 4 <= len(ledger) - 1 <= jobs
    assert not os.path.exists(os.path.join(other, "logs", "job_server.tsv"))
    for model in ("demo-mha", "demo-gqa", "demo-untied"):
        for v in (0, 1, 2):
            for rel in (f"results/{model}/{model}.v{v}.bin", f"results/{model}/{model}.v{v}.verify.json",
                        f"reports/{model}/{model}.v{v}.md", f"reports/{model}/{model}.html"):
                assert filecmp.cmp(os.path.join(default_run, rel), os.path.join(other, rel), shallow=False), rel
    assert filecmp.cmp(os.path.join(default_run, "reports/summary.html"), os.path.join(other, "reports/summary.html"),
                       shallow=False)


def test_nothing_to_do_on_rerun(default_run):
    proc = snakemake(default_run, "-n")
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def test_failed_verification_fails_the_run(tmp_path):
    """A job whose file does not verify makes the whole run fail (and leaves no verify JSON)."""
    workdir = workflow_copy(tmp_path / "w")
    ckpt = os.path.join(ROOT, "tests", "data", "tiny_a.pt")
    (tmp_path / "c.yaml").write_text(f"models: {{a: {{source: llama2c, path: '{ckpt}'}}}}\nversions: [1]\n")
    assert snakemake(workdir, "results/a/a.v1.bin", "--configfile", str(tmp_path / "c.yaml")).returncode == 0
    with open(os.path.join(workdir, "results/a/a.v1.bin"), "r+b") as f:  # corrupt one q byte
        f.seek(300)
        b = f.read(1)[0]
        f.seek(300)
        f.write(bytes([b ^ 0x40]))
    proc = snakemake(workdir, "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0
    assert "FAILED" in open(os.path.join(workdir, "logs/verify/a.log")).read()
    assert not os.path.exists(os.path.join(workdir, "results/a/a.v1.verify.json"))


def _train_tokenizer(folder, vocab_size: int) -> str:
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "llama", "tensor", "quant", "group", "scale", "model"]
    text = folder / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)))
    prefix = folder / f"tok{vocab_size}"
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=vocab_size, model_type="bpe",
                                   hard_vocab_limit=False, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
                                   minloglevel=2)
    return f"{prefix}.model"


def test_hf_source_with_tokenizer_and_hf_output(tmp_path):
    """A Hugging Face directory -> v0, v2 (byte-identical to golden), an hf directory and tokenizer.bin."""
    import sentencepiece as spm

    workdir = workflow_copy(tmp_path / "w")
    tok = _train_tokenizer(tmp_path, 64)
    assert spm.SentencePieceProcessor(model_file=tok).vocab_size() == 64
    hf_dir = os.path.join(ROOT, "tests", "data", "tiny_hf_untied")
    (tmp_path / "c.yaml").write_text(
        f"models: {{hfu: {{source: hf, path: '{hf_dir}', tokenizer: '{tok}'}}}}\nversions: [0, 2, hf]\n")
    proc = snakemake(workdir, "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for v in (0, 2):
        assert filecmp.cmp(os.path.join(workdir, f"results/hfu/hfu.v{v}.bin"),
                           os.path.join(ROOT, f"tests/data/tiny_hf_untied.v{v}.bin"), shallow=False)
    hf_files = sorted(f for f in os.listdir(os.path.join(workdir, "results/hfu/hf")) if f != ".snakemake_timestamp")
    assert hf_files == ["config.json", "model.safetensors"]
    summary = json.load(open(os.path.join(workdir, "reports/summary.json")))["files"]
    assert [(r["version"], r["verified"]) for r in summary] == [(0, True), (2, True), ("hf", True)]
    with open(os.path.join(workdir, "results/hfu/tokenizer.bin"), "rb") as f:
        assert int.from_bytes(f.read(4), "little") > 0  # max_token_length; fields are tested in test_tokenizer


def test_tokenizer_vocab_mismatch_fails_the_run(tmp_path):
    workdir = workflow_copy(tmp_path / "w")
    tok = _train_tokenizer(tmp_path, 80)
    hf_dir = os.path.join(ROOT, "tests", "data", "tiny_hf_untied")
    (tmp_path / "c.yaml").write_text(f"models: {{m: {{source: hf, path: '{hf_dir}', tokenizer: '{tok}'}}}}\nversions: [0]\n")
    proc = snakemake(workdir, "results/m/tokenizer.bin", "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0
    log = open(os.path.join(workdir, "logs/tokenizer/m.log")).read()
    assert "80" in log and "64" in log and "Traceback" not in log
    assert not os.path.exists(os.path.join(workdir, "results/m/tokenizer.bin"))


def test_url_source_is_fetched_pinned_and_converted(tmp_path):
    """url + sha256 through the fetch rule (a real HTTP server on 127.0.0.1), then export and verify."""
    import functools
    import hashlib
    import http.server
    import threading

    data = os.path.join(ROOT, "tests", "data")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=data)
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        digest = hashlib.sha256(open(os.path.join(data, "tiny_b.pt"), "rb").read()).hexdigest()
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny_b.pt"
        workdir = workflow_copy(tmp_path / "w")
        (tmp_path / "c.yaml").write_text(f"models: {{b: {{source: llama2c, url: '{url}', sha256: {digest}}}}}\nversions: [2]\n")
        proc = snakemake(workdir, "--configfile", str(tmp_path / "c.yaml"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.shutdown()
    assert filecmp.cmp(os.path.join(workdir, "results/b/b.v2.bin"), os.path.join(data, "tiny_b.v2.bin"), shallow=False)
    record = json.load(open(os.path.join(workdir, "resources/checkpoints/b/SOURCE.json")))
    assert record["files"][0]["sha256"] == digest and "HF_TOKEN" not in json.dumps(record)


@pytest.mark.slow
def test_shell_metacharacters_in_paths_are_literal_file_names(tmp_path):
    """Checkpoint directory and tokenizer names full of shell syntax: the pipeline converts them as
    the literal file names they are (issue 14), and nothing they spell is ever executed."""
    workdir = workflow_copy(tmp_path / "w")
    hf_dir = tmp_path / f"hf {SHELL_SYNTAX}"
    shutil.copytree(os.path.join(ROOT, "tests", "data", "tiny_hf_untied"), hf_dir)
    tok = tmp_path / f"tok {SHELL_SYNTAX}.model"
    shutil.copy(_train_tokenizer(tmp_path, 64), tok)
    config = {"models": {"odd": {"source": "hf", "path": str(hf_dir), "tokenizer": str(tok)}}, "versions": [2],
              "functional": {"enabled": False}, "c_check": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(json.dumps(config))  # JSON is YAML, with no quoting of our own
    proc = snakemake(workdir, "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert filecmp.cmp(os.path.join(workdir, "results/odd/odd.v2.bin"),
                       os.path.join(ROOT, "tests/data/tiny_hf_untied.v2.bin"), shallow=False)
    assert os.path.getsize(os.path.join(workdir, "results/odd/tokenizer.bin")) > 0
    assert json.load(open(os.path.join(workdir, "reports/summary.json")))["files"][0]["verified"] is True
    assert not pwned(tmp_path, ROOT)


def test_a_failed_job_shows_its_error_line_in_snakemakes_output(tmp_path):
    """A garbage checkpoint: the export job's one-line error reaches Snakemake's own stderr, not
    only logs/export/g.log."""
    workdir = workflow_copy(tmp_path / "w")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 40)
    (tmp_path / "c.yaml").write_text(json.dumps({"models": {"g": {"source": "llama2c", "path": str(garbage)}},
                                                 "versions": [0]}))
    proc = snakemake(workdir, "results/g/g.v0.bin", "--configfile", str(tmp_path / "c.yaml"))
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("llama2bin: error:")]
    assert len(errors) == 1 and "garbage.pt" in errors[0], proc.stderr[-3000:]
    assert errors[0] in open(os.path.join(workdir, "logs/export/g.log")).read()
