"""Outputs appear under their final name only when complete: temp name in the same folder,
fsync, rename. An interrupted or failed write leaves at most a hidden `.NAME.*.part` file."""

from __future__ import annotations

import os
import tempfile

from .errors import Llama2binError


class AtomicOutput:
    def __init__(self, final_path: str):
        self.final_path = final_path
        folder = os.path.dirname(os.path.abspath(final_path))
        try:
            os.makedirs(folder, exist_ok=True)
            self.fd, self.tmp_path = tempfile.mkstemp(
                prefix=f".{os.path.basename(final_path)}.", suffix=".part", dir=folder
            )
            # mkstemp creates 0600; give the output the mode a plain open() would (0666 & ~umask).
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(self.fd, 0o666 & ~umask)
        except OSError as e:
            raise Llama2binError(f"{final_path}: cannot create output: {e.strerror}") from None

    def allocate(self, size: int) -> None:
        """Reserve the whole file now, so a full disk fails before any work, not after."""
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as e:
            raise Llama2binError(f"{self.final_path}: cannot reserve {size} bytes: {e.strerror}") from None

    def commit(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp_path, self.final_path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(self.final_path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


def write_atomic(path: str, data: bytes | str) -> None:
    """Write a small file (JSON, Markdown) atomically."""
    out = AtomicOutput(path)
    try:
        os.write(out.fd, data.encode() if isinstance(data, str) else data)
        out.commit()
    except BaseException:
        out.abort()
        raise


def check_free_space(sizes: dict[str, int]) -> None:
    """Fail early, with numbers, when a target filesystem cannot hold the outputs."""
    need: dict[int, tuple[int, str]] = {}
    for path, size in sizes.items():
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        dev = os.stat(folder).st_dev
        total, _ = need.get(dev, (0, folder))
        need[dev] = (total + size, folder)
    for total, folder in need.values():
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if total > free:
            raise Llama2binError(
                f"{folder}: not enough disk space: the outputs need {total / 1e6:.1f} MB, {free / 1e6:.1f} MB free"
            )
