"""Outputs never destroy inputs: one check every writing command runs before it opens anything.

Paths are compared by what they are, not how they are spelled: `x`, `./x`, `d/../x`, a hard
link and a symlink to the same file all have the same (st_dev, st_ino), which is what
`os.path.samefile` compares. An output that does not exist yet is located by the identity of its
nearest existing ancestor plus the remaining name components, so `out.bin` and `./out.bin` collide
even before either exists.

Refused, each with one message naming both paths:
- an output that is an input (same file) or lies inside an input directory (HF/Meta source
  directories: the readers glob them, and nothing of the user's there is ours to replace);
- an input inside an output directory (`--version hf` replaces its whole directory);
- two outputs that resolve to the same path (one would silently replace the other), or one
  output inside another output directory;
- an output that exists and is not what the command writes: a special file (FIFO, device,
  socket: `/dev/null` as root would be replaced by a regular file), a directory where a file
  goes, or a file where a directory goes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import Llama2binError

Identity = tuple[int, int]  # (st_dev, st_ino): what os.path.samefile compares


@dataclass(frozen=True)
class Output:
    """A path a command will write: a file (`directory=False`) or a whole directory."""

    path: str
    directory: bool = False
    why_directory: str = ""  # said when a directory output exists as something else


def _identity(path: str) -> Identity | None:
    try:
        st = os.stat(path)  # follows symlinks: a link to an input is that input
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None
    return (st.st_dev, st.st_ino)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"), (stat.S_ISREG, "regular file")):
        if test(mode):
            return name
    return "special file"


def _location(path: str) -> tuple[Identity, tuple[str, ...]]:
    """(identity of the nearest existing ancestor, the name components below it)."""
    real = os.path.realpath(path)  # resolves symlinks in the existing part, `.` and `..`
    rest: list[str] = []
    while True:
        ident = _identity(real)
        if ident is not None:
            return ident, tuple(reversed(rest))
        parent, name = os.path.split(real)
        if parent == real:  # cannot happen for an absolute path ("/" exists); guards the loop
            return (0, 0), tuple(reversed(rest))
        rest.append(name)
        real = parent


def _ancestors(path: str) -> list[tuple[Identity, str]]:
    """Every existing directory above `path`, nearest first: above what it resolves to, and
    above where its own name is (for a symlink, the folder holding the link)."""
    found: list[tuple[Identity, str]] = []
    resolved = os.path.realpath(path)
    chains = (os.path.dirname(resolved), os.path.realpath(os.path.dirname(os.path.abspath(path))))
    for folder in chains:
        while True:
            ident = _identity(folder)
            if ident is not None and all(ident != known for known, _ in found):
                found.append((ident, folder))
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    return found


def _input_identities(inputs: Iterable[str]) -> list[tuple[Identity, str, bool]]:
    """(identity, path as given, is a directory) of every existing input, plus the files directly
    inside an input directory (an HF snapshot's files are symlinks into the hub cache: an output
    hard-linked or linked to one of those blobs is that input too)."""
    found: list[tuple[Identity, str, bool]] = []
    for path in inputs:
        ident = _identity(path)
        if ident is None:
            continue  # the reader reports a missing input in its own words
        is_dir = os.path.isdir(path)
        found.append((ident, path, is_dir))
        if is_dir:
            try:
                names = sorted(os.listdir(path))
            except OSError:
                continue
            for name in names:
                member = os.path.join(path, name)
                member_ident = _identity(member)
                if member_ident is not None:
                    found.append((member_ident, member, os.path.isdir(member)))
    return found


def _check_kind(out: Output) -> None:
    try:
        st = os.stat(out.path)
    except FileNotFoundError:
        return  # absent (or a dangling symlink, which the rename replaces): fine
    except OSError as e:
        raise Llama2binError(f"{out.path}: cannot inspect the output path: {e.strerror}") from None
    except ValueError:
        raise Llama2binError(f"{out.path!r}: not a usable output path (NUL byte)") from None
    wanted = "directory" if out.directory else "regular file"
    kind = _file_kind(st.st_mode)
    if kind != wanted and out.directory and out.why_directory:
        raise Llama2binError(f"{out.path}: exists and is not a directory ({out.why_directory})")
    if kind != wanted:
        raise Llama2binError(f"{out.path}: output exists and is a {kind}, not a {wanted}; refusing to replace it")


def check_outputs(inputs: Sequence[str], outputs: Sequence[str | Output]) -> None:
    """Refuse (Llama2binError) any output that would replace or write into an input, collide with
    another output, or replace something that is not a regular file. Runs before anything is
    opened for writing; `inputs` may be files or directories, missing ones are skipped."""
    outs = [o if isinstance(o, Output) else Output(o) for o in outputs]
    for out in outs:
        _check_kind(out)
    known_inputs = _input_identities(inputs)
    input_dirs = {ident: path for ident, path, is_dir in known_inputs if is_dir}
    located: list[tuple[tuple[Identity, tuple[str, ...]], Output]] = []
    for out in outs:
        ident = _identity(out.path)
        if ident is not None:
            for input_ident, input_path, _ in known_inputs:
                if ident == input_ident:
                    raise Llama2binError(
                        f"{out.path}: output is the same file as input {input_path}; refusing to overwrite an input")
        for ancestor, _ in _ancestors(out.path):
            if ancestor in input_dirs:
                raise Llama2binError(
                    f"{out.path}: output lies inside input directory {input_dirs[ancestor]}; refusing to write there")
        if out.directory and ident is not None:
            for _, input_path, _ in known_inputs:
                if any(a == ident for a, _ in _ancestors(input_path)):
                    raise Llama2binError(
                        f"{out.path}: output directory holds input {input_path}; refusing to replace it")
        where = _location(out.path)
        for other_where, other in located:
            if where == other_where:
                raise Llama2binError(f"{other.path} and {out.path}: two outputs resolve to the same path")
        located.append((where, out))
    for out in outs:  # one output inside another output directory: replacing the directory drops it
        if not out.directory:
            continue
        here = _location(out.path)
        for other in outs:
            if other is out:
                continue
            ident, parts = _location(other.path)
            if ident == here[0] and parts[: len(here[1])] == here[1] and len(parts) > len(here[1]):
                raise Llama2binError(f"{other.path}: output lies inside output directory {out.path}")
            target = _identity(out.path)
            if target is not None and any(a == target for a, _ in _ancestors(other.path)):
                raise Llama2binError(f"{other.path}: output lies inside output directory {out.path}")


__all__ = ["Output", "check_outputs"]
