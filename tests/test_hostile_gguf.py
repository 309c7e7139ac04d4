"""Hostile GGUFs through the real CLI (issue 20 item 9), judged by tests/hostile_harness.py on
its seven points: one `llama2bin: error:` line naming the reason, non-zero exit, no traceback,
no output under a final name, inputs unchanged, a time limit, a 1 GiB address-space cap.

The files are test_gguf_source.py's HOSTILE table (where the reader refuses each in-process,
47 cases); here the issue's list goes through every command that opens a GGUF: export and
verify with `--gguf` as the source, `inspect` and `verify` of a GGUF as the output (opened
by its magic), plus a FIFO and a device in place of the file.
"""

from __future__ import annotations

import os

import pytest
from hostile_harness import HostileCase, run_hostile
from test_gguf_source import HOSTILE

DATA = os.path.join(os.path.dirname(__file__), "data")
CKPT = os.path.join(DATA, "tiny_a.pt")

# The issue's list: magic, version, counts in the billions, lengths beyond the file, nesting,
# tensor ranges, overflowing dims, unknown types, duplicate names.
ISSUE_CASES = ["bad_magic", "version_1", "tensors_in_the_billions", "keys_in_the_billions", "string_beyond_the_file",
               "array_beyond_the_file", "nested_arrays", "overlapping_tensors", "unaligned_offset",
               "tensor_far_beyond_the_file", "dims_overflow", "unknown_tensor_type", "duplicate_tensor", "duplicate_key"]


def _file(tmp_path, name: str) -> str:
    path = str(tmp_path / f"{name}.gguf")
    with open(path, "wb") as f:
        f.write(HOSTILE[name][0])
    return path


@pytest.mark.slow  # a process per case (~1-2 s each); the reader refuses the same files in-process in test_gguf_source
@pytest.mark.parametrize("name", ISSUE_CASES)
def test_a_hostile_gguf_source_is_refused_by_export(tmp_path, name: str) -> None:
    path, out = _file(tmp_path, name), str(tmp_path / "out.v0.bin")
    run_hostile(HostileCase(f"gguf_source_{name}", ["export", out, "--gguf", path, "--quiet"], inputs=[path],
                            outputs=[out], needle=HOSTILE[name][1], timeout=30))


@pytest.mark.parametrize("command", ["inspect", "verify"])
@pytest.mark.parametrize("name", ["bad_magic_with_gguf_header", "nested_arrays", "overlapping_tensors"])
def test_a_hostile_gguf_output_is_refused_by_inspect_and_verify(tmp_path, command: str, name: str) -> None:
    if name == "bad_magic_with_gguf_header":  # GGUF magic, then a version no reader knows
        path = str(tmp_path / "v.gguf")
        with open(path, "wb") as f:
            f.write(b"GGUF" + (77).to_bytes(4, "little") + bytes(56))
        needle = "GGUF version 77"
    else:
        path, needle = _file(tmp_path, name), HOSTILE[name][1]
    record = str(tmp_path / "v.json")
    argv = ["inspect", path] if command == "inspect" else \
        ["verify", path, "--checkpoint", CKPT, "--no-functional", "--quiet", "--json", record]
    run_hostile(HostileCase(f"gguf_output_{command}_{name}", argv, inputs=[path, CKPT], outputs=[record],
                            needle=needle, timeout=30))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_special_file_in_place_of_a_gguf(tmp_path, kind: str) -> None:
    if kind == "fifo":
        path = str(tmp_path / "m.gguf")
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    out = str(tmp_path / "out.v0.bin")
    run_hostile(HostileCase(f"gguf_{kind}_source", ["export", out, "--gguf", path, "--quiet"], inputs=[path],
                            outputs=[out], needle="regular file", timeout=30))
    run_hostile(HostileCase(f"gguf_{kind}_inspect", ["inspect", path], inputs=[path], needle="regular file", timeout=30))
