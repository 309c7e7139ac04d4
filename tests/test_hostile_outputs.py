"""Issue 14, outputs: no command destroys an input, lets two outputs collide, replaces a special
file, or prints a traceback. Every case runs the real CLI through tests/hostile_harness.py (one
error line, non-zero exit, no traceback, no output under a final name, inputs unchanged by hash,
time limit, 1 GiB address-space cap); unit tests at the end: the guard accepts ordinary outputs,
atomic.py refuses special files on its own (defence in depth)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import random
import resource
import shutil
import stat
import subprocess
import sys

import pytest
from helpers import DATA
from hostile_harness import HostileCase, run_hostile

from llama2bin.atomic import AtomicOutput, write_atomic
from llama2bin.cli import main
from llama2bin.errors import Llama2binError
from llama2bin.outputs_guard import Output, check_outputs


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    """A workspace of real inputs: checkpoint, HF directory, .bin, tokenizer.model, verify and
    report JSONs (the last two written by the CLI itself)."""
    root = tmp_path_factory.mktemp("ws")
    paths = {"root": str(root)}
    paths["pt"] = shutil.copy(os.path.join(DATA, "tiny_a.pt"), str(root / "tiny_a.pt"))
    paths["bin"] = shutil.copy(os.path.join(DATA, "tiny_a.v0.bin"), str(root / "tiny_a.v0.bin"))
    paths["hf"] = shutil.copytree(os.path.join(DATA, "tiny_hf_untied"), str(root / "hf"))
    paths["verify"] = str(root / "tiny_a.v0.verify.json")
    assert main(["verify", paths["bin"], "--checkpoint", paths["pt"], "--no-functional", "--quiet",
                 "--json", paths["verify"]]) == 0
    assert main(["report", paths["verify"], "--model", "tiny_a", "--out-dir", str(root / "reports"), "--no-plots"]) == 0
    paths["report"] = str(root / "reports" / "tiny_a.v0.json")
    paths["tokenizer"] = _train_tokenizer(str(root / "tokenizer.model"))
    return paths


def _train_tokenizer(path: str) -> str:
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "café", "hello", "world"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(200)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=60, model_type="bpe",
                                   byte_fallback=False, character_coverage=1.0, num_threads=1, minloglevel=2)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def _inputs(ws: dict[str, str]) -> list[str]:
    return [ws["pt"], ws["bin"], ws["hf"], ws["verify"], ws["report"], ws["tokenizer"]]


def _case(ws: dict[str, str], name: str, argv: list[str], outputs: list[str] = (), needle: str | None = None,
          cwd: str | None = None) -> HostileCase:
    return HostileCase(name, argv, inputs=_inputs(ws), outputs=list(outputs), needle=needle, cwd=cwd)


# ---- destroyed inputs ---------------------------------------------------------------------


def test_export_over_its_own_checkpoint(ws):
    run_hostile(_case(ws, "export OUT = input .pt", ["export", ws["pt"], "--checkpoint", ws["pt"]],
                      needle=f"{ws['pt']}: output is the same file as input {ws['pt']}"))


def test_export_over_a_hard_link_to_the_checkpoint(ws, tmp_path):
    link = str(tmp_path / "hard.bin")
    os.link(ws["pt"], link)
    run_hostile(_case(ws, "export OUT = hard link of the .pt", ["export", link, "--checkpoint", ws["pt"]],
                      needle=f"{link}: output is the same file as input {ws['pt']}"))


def test_export_over_a_symlink_to_the_checkpoint(ws, tmp_path):
    link = str(tmp_path / "soft.bin")
    os.symlink(ws["pt"], link)
    run_hostile(_case(ws, "export OUT = symlink to the .pt", ["export", link, "--checkpoint", ws["pt"]],
                      outputs=[link], needle=f"{link}: output is the same file as input {ws['pt']}"))


def test_export_over_the_checkpoint_spelled_differently(ws):
    run_hostile(_case(ws, "export ./x.pt --checkpoint x.pt", ["export", "./tiny_a.pt", "--checkpoint", "tiny_a.pt"],
                      cwd=ws["root"], needle="./tiny_a.pt: output is the same file as input tiny_a.pt"))


def test_export_over_its_own_bin_source(ws):
    run_hostile(_case(ws, "export OUT = --bin source", ["export", ws["bin"], "--bin", ws["bin"], "--version", "0"],
                      needle=f"{ws['bin']}: output is the same file as input {ws['bin']}"))


def test_verify_json_over_the_checkpoint_or_the_file(ws):
    run_hostile(_case(ws, "verify --json = checkpoint",
                      ["verify", ws["bin"], "--checkpoint", ws["pt"], "--no-functional", "--json", ws["pt"]],
                      needle=f"same file as input {ws['pt']}"))
    run_hostile(_case(ws, "verify --json = the verified .bin",
                      ["verify", ws["bin"], "--checkpoint", ws["pt"], "--no-functional", "--json", ws["bin"]],
                      needle=f"same file as input {ws['bin']}"))


def test_hf_export_into_the_source_hf_directory(ws):
    run_hostile(_case(ws, "--version hf OUT = --hf DIR", ["export", ws["hf"], "--hf", ws["hf"], "--version", "hf"],
                      needle=f"{ws['hf']}: output is the same file as input {ws['hf']}"))


def test_bin_into_the_source_hf_directory(ws):
    out = os.path.join(ws["hf"], "model.v0.bin")
    run_hostile(_case(ws, "export OUT inside --hf DIR", ["export", out, "--hf", ws["hf"]], outputs=[out],
                      needle=f"{out}: output lies inside input directory {ws['hf']}"))


def test_hf_directory_output_holding_the_input(ws, tmp_path):
    folder = tmp_path / "holder"
    folder.mkdir()
    pt = shutil.copy(ws["pt"], str(folder / "model.pt"))
    case = HostileCase("--version hf OUT = the checkpoint's folder",
                       ["export", str(folder), "--checkpoint", pt, "--version", "hf"], inputs=[str(folder)],
                       needle=f"{folder}: output directory holds input {pt}")
    run_hostile(case)


def test_tokenizer_over_its_model(ws):
    run_hostile(_case(ws, "tokenizer OUT = tokenizer.model", ["tokenizer", ws["tokenizer"], ws["tokenizer"]],
                      needle=f"same file as input {ws['tokenizer']}"))


def test_report_out_dir_over_a_verify_json(ws, tmp_path):
    # NAME.json (no .verify) makes the report NAME.json: the same path when --out-dir is its folder
    folder = tmp_path / "results"
    folder.mkdir()
    result = shutil.copy(ws["verify"], str(folder / "tiny_a.v0.json"))
    case = HostileCase("report --out-dir over its input", ["report", result, "--model", "m", "--out-dir", str(folder),
                       "--no-plots"], inputs=[result], outputs=[str(folder / "tiny_a.v0.md")],
                       needle=f"same file as input {result}")
    run_hostile(case)


def test_summary_over_a_report(ws, tmp_path):
    run_hostile(_case(ws, "summary --md = report input",
                      ["summary", ws["report"], "--md", ws["report"], "--json", str(tmp_path / "s.json")],
                      outputs=[str(tmp_path / "s.json")], needle=f"same file as input {ws['report']}"))


def test_fetch_dest_inside_the_local_path(ws):
    run_hostile(_case(ws, "fetch --path DIR --dest DIR", ["fetch", "--model", "m", "--path", ws["hf"], "--dest", ws["hf"]],
                      needle=f"inside input directory {ws['hf']}"))


# ---- two outputs, one path ----------------------------------------------------------------


def test_two_versions_to_the_same_out(ws, tmp_path):
    out = str(tmp_path / "out.bin")
    run_hostile(_case(ws, "out.bin vs ./out.bin", ["export", "out.bin", "./out.bin", "--checkpoint", ws["pt"],
                                                   "--version", "0", "1"], outputs=[out], cwd=str(tmp_path),
                      needle="out.bin and ./out.bin: two outputs resolve to the same path"))


def test_two_outputs_through_a_symlinked_folder(ws, tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "link")
    a, b = str(tmp_path / "d" / "m.bin"), str(tmp_path / "link" / "m.bin")
    run_hostile(_case(ws, "d/m.bin vs link/m.bin", ["export", a, b, "--checkpoint", ws["pt"], "--version", "0", "2"],
                      outputs=[a], needle="two outputs resolve to the same path"))


def test_bin_inside_the_hf_output_directory(ws, tmp_path):
    folder, inner = str(tmp_path / "hfout"), str(tmp_path / "hfout" / "m.bin")
    run_hostile(_case(ws, "export D D/m.bin --version hf 0", ["export", folder, inner, "--checkpoint", ws["pt"],
                                                               "--version", "hf", "0"],
                      outputs=[folder, inner], needle=f"{inner}: output lies inside output directory {folder}"))


def test_same_json_twice(ws, tmp_path):
    out = str(tmp_path / "r.json")
    run_hostile(_case(ws, "verify two files, one --json path",
                      ["verify", ws["bin"], ws["bin"], "--checkpoint", ws["pt"], "--no-functional", "--json", out, out],
                      outputs=[out], needle="two outputs resolve to the same path"))
    run_hostile(_case(ws, "summary --md X --json X", ["summary", ws["report"], "--md", out, "--json", out],
                      outputs=[out], needle="two outputs resolve to the same path"))


# ---- special outputs ----------------------------------------------------------------------


def _assert_dev_null_intact() -> None:
    st = os.lstat("/dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_dev_null_is_never_replaced(ws):
    # Run as root here: without the guard, the atomic rename would turn /dev/null into a regular file.
    cases = [
        ("export /dev/null", ["export", "/dev/null", "--checkpoint", ws["pt"]]),
        ("verify --json /dev/null", ["verify", ws["bin"], "--checkpoint", ws["pt"], "--no-functional", "--json", "/dev/null"]),
        ("tokenizer OUT = /dev/null", ["tokenizer", ws["tokenizer"], "/dev/null"]),
        ("summary --json /dev/null", ["summary", ws["report"], "--md", "/dev/null.md", "--json", "/dev/null"]),
    ]
    for name, argv in cases:
        run_hostile(_case(ws, name, argv, outputs=["/dev/null", "/dev/null.md"],
                          needle="/dev/null: output exists and is a character device"))
        _assert_dev_null_intact()


def test_fifo_and_links_to_devices_as_outputs(ws, tmp_path):
    fifo = str(tmp_path / "pipe.bin")
    os.mkfifo(fifo)
    link = str(tmp_path / "null.bin")
    os.symlink("/dev/null", link)
    run_hostile(_case(ws, "FIFO as export OUT", ["export", fifo, "--checkpoint", ws["pt"]], outputs=[fifo],
                      needle=f"{fifo}: output exists and is a FIFO"))
    run_hostile(_case(ws, "FIFO as c-check --json", ["c-check", ws["bin"], "--json", fifo], outputs=[fifo],
                      needle=f"{fifo}: output exists and is a FIFO"))
    run_hostile(_case(ws, "symlink to /dev/null as OUT", ["export", link, "--checkpoint", ws["pt"]], outputs=[link],
                      needle=f"{link}: output exists and is a character device"))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    _assert_dev_null_intact()


def test_directory_where_a_file_goes_and_file_where_a_directory_goes(ws, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep")
    run_hostile(_case(ws, "export OUT is a directory", ["export", str(tmp_path / "adir"), "--checkpoint", ws["pt"]],
                      outputs=[str(tmp_path / "adir")], needle="output exists and is a directory, not a regular file"))
    run_hostile(_case(ws, "--version hf OUT is a file", ["export", str(tmp_path / "afile"), "--checkpoint", ws["pt"],
                                                          "--version", "hf"],
                      outputs=[str(tmp_path / "afile")],
                      needle="exists and is not a directory (--version hf writes a directory)"))


# ---- no tracebacks ------------------------------------------------------------------------


def _write_json(path: str, obj: object) -> str:
    pathlib.Path(path).write_text(json.dumps(obj))
    return path


def test_report_on_json_of_the_wrong_shape(ws, tmp_path):
    empty = _write_json(str(tmp_path / "empty.verify.json"), {})
    listed = _write_json(str(tmp_path / "listed.verify.json"), [1, 2])
    good = json.load(open(ws["verify"]))
    typed = _write_json(str(tmp_path / "typed.verify.json"), {**good, "tensors": 5})
    out_dir = str(tmp_path / "out")
    for path, needle in ((empty, f"{empty}: missing field 'schema'"),
                         (listed, f"{listed} must be an object, got a list"),
                         (typed, f"{typed}: tensors must be a list, got an integer")):
        run_hostile(HostileCase(f"report on {os.path.basename(path)}",
                                ["report", path, "--model", "m", "--out-dir", out_dir, "--no-plots"],
                                inputs=[path], outputs=[out_dir], needle=needle))


def test_summary_on_a_report_missing_a_field(ws, tmp_path):
    report = json.load(open(ws["report"]))
    del report["sha256"]
    path = _write_json(str(tmp_path / "r.json"), report)
    md, js = str(tmp_path / "s.md"), str(tmp_path / "s.json")
    run_hostile(HostileCase("summary on a report without sha256", ["summary", path, "--md", md, "--json", js],
                            inputs=[path], outputs=[md, js], needle=f"{path}: missing field 'sha256'"))


@pytest.mark.parametrize("flags, needle", [
    (["--eval-seqs", "1000000000"], "verify: argument --eval-seqs: 1000000000 is out of range"),
    (["--eval-len", "0"], "argument --eval-len: 0 is out of range"),
    (["--eval-len", "-5"], "argument --eval-len: -5 is out of range"),
    (["--eval-seqs", "65536", "--eval-len", "4096"], "tokens is more than"),
    (["--threads", "0"], "argument --threads: 0 is out of range"),
    (["--eval-seed", "-1"], "argument --eval-seed: -1 is out of range"),
    (["--kld-max", "nan"], "argument --kld-max: nan is not a finite number"),
    (["--same-top-min", "1.5"], "argument --same-top-min: 1.5 is not a finite number in [0, 1]"),
])
def test_verify_numbers_out_of_range(ws, flags, needle):
    run_hostile(_case(ws, f"verify {' '.join(flags)}", ["verify", ws["bin"], "--checkpoint", ws["pt"], *flags],
                      needle=needle))


@pytest.mark.parametrize("flags, needle", [
    (["--group-size", "-64"], "argument --group-size: -64 is out of range"),
    (["--group-size", "0"], "argument --group-size: 0 is out of range"),
    (["--threads", "-1"], "argument --threads: -1 is out of range"),
    (["--max-seq-len", "0"], "argument --max-seq-len: 0 is out of range"),
])
def test_export_numbers_out_of_range(ws, tmp_path, flags, needle):
    out = str(tmp_path / "o.bin")
    run_hostile(_case(ws, f"export {' '.join(flags)}", ["export", out, "--checkpoint", ws["pt"], *flags],
                      outputs=[out], needle=needle))


# Stands for a bug or an unvalidated value deep inside a command; `memory` is a real MemoryError
# under the address-space cap.
DRIVER = """
import sys
import llama2bin.cli as cli
def recurse(n):
    return recurse(n + 1) + 1
FAULTS = {"recursion": lambda: recurse(0), "memory": lambda: bytearray(1 << 40), "key": lambda: {}["missing"]}
cli.cmd_demo = lambda args: FAULTS[args.output]()
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fault, kind", [("recursion", "RecursionError"), ("memory", "MemoryError"), ("key", "KeyError")])
def test_unforeseen_exception_is_one_line_in_a_real_process(fault, kind, tmp_path):
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([sys.executable, "-c", DRIVER, "demo", fault, "--preset", "mha"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, preexec_fn=cap)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"llama2bin: error: internal error: {kind}"), proc.stderr
    assert lines[0].endswith("(please report)") and os.listdir(tmp_path) == []


def test_last_resort_handler_names_the_type(monkeypatch, capsys):
    import llama2bin.cli as cli

    def boom(args):  # stands for any bug deep in a command
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(cli, "cmd_demo", boom)
    assert main(["demo", "x.pt", "--preset", "mha"]) == 1
    err = capsys.readouterr().err
    assert err == "llama2bin: error: internal error: ZeroDivisionError: division by zero second line (please report)\n"


# ---- the guard accepts ordinary outputs; atomic.py refuses special files on its own ------


def test_guard_accepts_ordinary_outputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    previous = tmp_path / "m.v0.bin"
    previous.write_bytes(b"old")  # an earlier output: replacing it is the point
    unrelated = tmp_path / "elsewhere.bin"
    unrelated.write_bytes(b"y")
    os.symlink(unrelated, tmp_path / "link.bin")  # the rename replaces the link, not its target
    hf_prev = tmp_path / "hf"
    hf_prev.mkdir()
    (hf_prev / "config.json").write_text("{}")
    check_outputs([str(ckpt), str(src)], [str(previous), str(tmp_path / "m.v1.bin"), str(tmp_path / "link.bin"),
                                          Output(str(hf_prev), directory=True), Output(str(tmp_path / "new"), directory=True),
                                          str(tmp_path / "sub" / "deeper" / "m.v2.bin")])
    check_outputs([str(tmp_path / "missing.pt")], [str(tmp_path / "missing.bin")])  # the reader reports a missing input


def test_guard_compares_identities_not_spellings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(Llama2binError, match="two outputs resolve to the same path"):
        check_outputs([], ["d/x.bin", "d/../d/./x.bin"])
    with pytest.raises(Llama2binError, match="two outputs resolve to the same path"):
        check_outputs([], ["new/x.bin", f"{tmp_path}/new/x.bin"])  # neither the file nor its folder exists yet
    (tmp_path / "in.pt").write_bytes(b"x")
    with pytest.raises(Llama2binError, match="d/../in.pt: output is the same file as input in.pt"):
        check_outputs(["in.pt"], ["d/../in.pt"])


def test_atomic_output_refuses_special_files(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(Llama2binError, match="special file"):
        write_atomic(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # Something special appears under the final name while the output is written: the commit refuses.
    late = str(tmp_path / "late.bin")
    out = AtomicOutput(late)
    os.write(out.fd, b"data")
    os.mkfifo(late)
    with pytest.raises(Llama2binError, match="special file"):
        out.commit()
    out.abort()
    assert stat.S_ISFIFO(os.lstat(late).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "late.bin"]  # no .part left behind


def test_guard_protects_a_symlinked_input_inside_an_output_directory(tmp_path):
    # Replacing D would delete the link the user reads from, even though its target lives elsewhere.
    target = tmp_path / "store" / "m.pt"
    target.parent.mkdir()
    target.write_bytes(b"x")
    folder = tmp_path / "D"
    folder.mkdir()
    os.symlink(target, folder / "m.pt")
    with pytest.raises(Llama2binError, match=f"{folder}: output directory holds input {folder}/m.pt"):
        check_outputs([str(folder / "m.pt")], [Output(str(folder), directory=True)])
