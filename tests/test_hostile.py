"""Hostile .bin files against the reader, `inspect` and `verify`, under a hard memory ceiling.

tests/test_reader.py checks one refusal per kind of damage and fuzzes header bytes. Here every
header field of every version gets extreme values (2**31-1, -1, -2**31, 0, just past its bound),
files are cut at every section boundary, grown by garbage, replaced by random bytes, or keep a
valid header over a random body; each goes through BinFile, check_tensors(), and the CLI's `inspect`
and `verify`. All of it runs in one child process whose address space is capped (RLIMIT_AS),
so any attempt to size an allocation from a hostile field dies with MemoryError instead of
quietly succeeding on a machine with swap, and the test fails.

Expected outcomes: a damaged file is refused with Llama2binError (one `llama2bin: error:` line,
exit 1, no traceback); a file whose header is intact and whose size matches opens, and `verify`
reports the mismatches as failures (exit 1, `FAILED` lines). Anything else is a crash.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import traceback

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# The child imports numpy and, for v0 rope tables, torch, and maps a 500 MB sparse file: 1.3 GB
# of address space measured (VmPeak; RSS stays near 260 MB), mostly libraries mapped but never
# touched. 2 GiB leaves room for that and is far below what sizing anything from a hostile
# field would ask for (dim = 2**31-1 alone implies exabytes).
ADDRESS_SPACE_LIMIT = 2 << 30

BASES = {  # golden file -> its checkpoint
    "tiny_a.v0.bin": "tiny_a.pt",
    "tiny_b.v1.bin": "tiny_b.pt",
    "tiny_b.v2.bin": "tiny_b.pt",
}
EXTREMES = (2**31 - 1, -1, -(2**31), 0)


# ---- the cases ---------------------------------------------------------------------------


def _int_fields(version: int) -> dict[str, int]:
    """Byte offset of every int32 header field."""
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
    base = 0 if version == 0 else 8
    fields = {name: base + 4 * i for i, name in enumerate(names)}
    if version:
        fields.update(version=4, group_size=37)
    return fields


def make_cases(out_dir: str) -> list[dict]:
    """Write every hostile file; return [{path, source, expect}] (expect: refuse | failures)."""
    from llama2bin import constants as C
    from llama2bin.formats.reader import BinFile
    from llama2bin.formats.v0 import v0_layout_without_rope

    bounds = {"dim": C.MAX_DIM, "hidden_dim": C.MAX_HIDDEN_DIM, "n_layers": C.MAX_LAYERS, "n_heads": C.MAX_HEADS,
              "n_kv_heads": C.MAX_HEADS, "vocab_size": C.MAX_VOCAB, "max_seq_len": C.MAX_SEQ_LEN}
    rng = np.random.default_rng(8)
    cases: list[dict] = []

    def add(name: str, data: bytes, source: str, expect: str) -> None:
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        cases.append({"path": path, "source": source, "expect": expect})

    for base, ckpt in BASES.items():
        raw = open(os.path.join(DATA, base), "rb").read()
        source = os.path.join(DATA, ckpt)
        stem = base.replace(".bin", "")
        with BinFile(os.path.join(DATA, base)) as bf:
            version = bf.version
            boundaries = sorted({0} | {s.offset for s in bf.layout.sections} | {s.offset + s.nbytes for s in bf.layout.sections})
            # a v0 file cut exactly before its rope tables is a valid v0 without them (issue 12.2; test_bin_source)
            without_rope = {v0_layout_without_rope(bf.config).size} if version == 0 else set()
        for field, offset in _int_fields(version).items():
            values = list(EXTREMES) + ([bounds[field] + 1] if field in bounds else [])
            if field == "vocab_size" and version == 0:
                values.append(-(bounds[field] + 1))  # negative = untied classifier in v0
            for value in values:
                add(f"{stem}.{field}={value}.bin", raw[:offset] + struct.pack("<i", value) + raw[offset + 4 :], source,
                    "refuse")
        for cut in sorted({b + d for b in boundaries for d in (-1, 0, 1)} - {len(raw)} - without_rope):
            if 0 <= cut < len(raw):
                add(f"{stem}.cut{cut}.bin", raw[:cut], source, "refuse")
        for extra in (1, 3, 64, 4096):
            add(f"{stem}.plus{extra}.bin", raw + rng.bytes(extra), source, "refuse")
        header = 28 if version == 0 else 256
        add(f"{stem}.random-body.bin", raw[:header] + rng.bytes(len(raw) - header), source, "failures")
        # Random bytes everywhere but the weights' first tensor: failures further in.
        first_weight_end = boundaries[2]
        add(f"{stem}.random-tail.bin", raw[:first_weight_end] + rng.bytes(len(raw) - first_weight_end), source,
            "failures")
    for i, size in enumerate((0, 1, 4, 27, 28, 255, 256, 257, 1000, 100_000)):
        add(f"random{i}.bin", rng.bytes(size), os.path.join(DATA, "tiny_a.pt"), "refuse")
    # A header that is self-consistent with a file ~500 MB long (sparse: no disk used): it opens,
    # and verifying it against another model must fail on the header without reading the weights.
    big = struct.pack("<7i", 1024, 2816, 8, 16, 16, 8192, 256)
    path = os.path.join(out_dir, "consistent-but-other-model.v0.bin")
    with open(path, "wb") as f:
        f.write(big)
    from llama2bin.formats import FORMATS
    from llama2bin.model import ModelConfig

    size = FORMATS["0"].layout(ModelConfig(1024, 2816, 8, 16, 16, 8192, 256, shared_classifier=True), None).size
    os.truncate(path, size)
    cases.append({"path": path, "source": os.path.join(DATA, "tiny_a.pt"), "expect": "failures"})
    return cases


# ---- the child: run every case under the address-space cap -----------------------------


def _cli(*argv: str) -> tuple[int, str]:
    from llama2bin.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def run_case(case: dict) -> dict:
    from llama2bin.checks.verification import verify_output
    from llama2bin.errors import Llama2binError
    from llama2bin.formats.reader import BinFile
    from llama2bin.formats.source_registry import open_source

    seen: dict = {}
    try:
        try:
            with BinFile(case["path"]) as bf:
                seen["open"] = f"ok v{bf.version}"
        except Llama2binError as e:
            seen["open"] = f"refused: {e}"
        with open_source("llama2c", case["source"]) as source:
            try:
                result = verify_output(case["path"], source).tensor
                seen["verify"] = f"failures: {result.failures[:1]}" if result.failures else "passed"
            except Llama2binError as e:
                seen["verify"] = f"refused: {e}"
        seen["cli_inspect"] = _cli("inspect", case["path"])
        seen["cli_verify"] = _cli("verify", case["path"], "--checkpoint", case["source"], "--quiet")
    except BaseException:  # noqa: B036 - MemoryError and friends are exactly what this looks for
        seen["crash"] = traceback.format_exc()
    return {**case, **seen}


def child(cases_json: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    with open(cases_json) as f:
        cases = json.load(f)
    results = [run_case(c) for c in cases]
    with open("/proc/self/status") as f:
        vm_peak_kb = int(next(line for line in f if line.startswith("VmPeak:")).split()[1])
    json.dump({"results": results, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "vm_peak_kb": vm_peak_kb}, sys.stdout)


# ---- the test ----------------------------------------------------------------------------


def _one_error_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("llama2bin: error:") and "Traceback" not in stderr


@pytest.mark.slow
def test_hostile_files_are_refused_or_fail_verification_within_a_memory_cap(tmp_path):
    cases = make_cases(str(tmp_path))
    cases_json = tmp_path / "cases.json"
    cases_json.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, __file__, str(cases_json)], capture_output=True, text=True, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    results = report["results"]
    assert len(results) == len(cases) > 150
    for r in results:
        name = os.path.basename(r["path"])
        assert "crash" not in r, (name, r.get("crash"))
        rc_inspect, err_inspect = r["cli_inspect"]
        rc_verify, err_verify = r["cli_verify"]
        if r["expect"] == "refuse":
            assert r["open"].startswith("refused: ") and r["verify"].startswith("refused: "), (name, r)
            assert r["open"][len("refused: "):].startswith(r["path"]), (name, r["open"])  # names the file
            assert rc_inspect == 1 and _one_error_line(err_inspect), (name, err_inspect)
            assert rc_verify == 1 and _one_error_line(err_verify), (name, err_verify)
        else:
            assert r["open"].startswith("ok ") and r["verify"].startswith("failures: "), (name, r)
            assert rc_inspect == 0, (name, err_inspect)
            assert rc_verify == 1 and "FAILED" in err_verify and "Traceback" not in err_verify, (name, err_verify)
            assert "llama2bin: error" not in err_verify, (name, err_verify)
    # The whole run, torch included, stayed far below a single gigabyte-sized allocation.
    assert report["maxrss_kb"] < 1 << 20, report["maxrss_kb"]


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    child(sys.argv[1])
