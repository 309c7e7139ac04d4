"""Outputs appear under their final name only when complete: temp name in the same folder,
fsync, rename. An interrupted or failed write leaves at most a hidden `.NAME.*.part` file, and
the next write of NAME deletes it (a killed 7B export would otherwise leave gigabytes behind)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator

from .errors import Llama2binError


class AtomicOutput:
    def __init__(self, final_path: str):
        self.final_path = final_path
        refuse_non_regular(final_path)
        folder = os.path.dirname(os.path.abspath(final_path))
        try:
            os.makedirs(folder, exist_ok=True)
            prefix = f".{os.path.basename(final_path)}."
            self.fd, self.tmp_path = _locked_temp(folder, prefix)
            # mkstemp creates 0600; give the output the mode a plain open() would (0666 & ~umask).
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(self.fd, 0o666 & ~umask)
            _remove_stale_parts(folder, prefix, self.tmp_path)
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
        refuse_non_regular(self.final_path)  # again: something may have appeared there while we wrote
        os.replace(self.tmp_path, self.final_path)  # still holding the lock: no sweeper touches it
        os.close(self.fd)
        self.fd = -1
        fsync_dir(os.path.dirname(os.path.abspath(self.final_path)))

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


def refuse_non_regular(final_path: str) -> None:
    """The rename replaces whatever is at `final_path`: refuse anything but a regular file (or a
    symlink, whose link alone the rename replaces). A FIFO, a device or a socket there is not an
    old output: as root, `/dev/null` would otherwise become a regular file. Defence in depth
    behind outputs_guard.check_outputs, which every command runs first."""
    try:
        mode = os.lstat(final_path).st_mode
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise Llama2binError(f"{final_path}: cannot inspect the output path: {getattr(e, 'strerror', None) or e}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        kind = "directory" if stat.S_ISDIR(mode) else "special file (FIFO, device or socket)"
        raise Llama2binError(f"{final_path}: output exists and is a {kind}, not a regular file; refusing to replace it")


# A writer holds an exclusive flock on its .part file until it commits or dies (the kernel drops
# the lock of a killed process), so a .part nobody holds a lock on belongs to a dead writer.
def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        return None


def _locked_temp(folder: str, prefix: str) -> tuple[int, str]:
    while True:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
        locked = _try_lock(fd)
        # A sweeper may have taken the lock (or taken it and deleted the file) between
        # mkstemp and flock: then this file is someone else's to delete; take another name.
        if locked is None or (locked and os.fstat(fd).st_nlink > 0):
            return fd, path
        os.close(fd)


def _remove_stale_parts(folder: str, prefix: str, own: str) -> None:
    """Delete `prefix*.part` files of writers that died (killed, OOM, node lost) in `folder`."""
    for entry in os.scandir(folder):
        if not (entry.name.startswith(prefix) and entry.name.endswith(".part")) or entry.path == own:
            continue
        try:
            fd = os.open(entry.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)  # NFS emulates flock with write locks
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and _try_lock(fd):
                os.unlink(entry.path)
        except OSError:
            pass
        finally:
            os.close(fd)


def fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (the new directory entry survives a crash)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def interruptions_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while a .part file is created and registered for abort: an
    interruption (the KeyboardInterrupt that Ctrl-C and the CLI's SIGTERM handler raise) between
    mkstemp and the registration would leave the file behind (the SIGTERM-mid-export test hit it
    under load). Python runs signal handlers in the main thread, between bytecodes, whichever
    thread the kernel delivers the signal to; so the handlers, not the signal mask, are swapped
    for ones that only note the signal, and the original handlers run right after, with the file
    registered."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be changed in the main thread (and only it runs them)
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)  # raises, as it would have a moment earlier
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)


@contextlib.contextmanager
def atomic_outputs(paths: Iterable[str]) -> Iterator[dict[str, AtomicOutput]]:
    """An AtomicOutput per path, written in the block: all committed when it ends, all aborted if
    it raises (outputs written together appear together or not at all)."""
    outputs: dict[str, AtomicOutput] = {}
    try:
        for path in paths:
            with interruptions_deferred():
                outputs[path] = AtomicOutput(path)
        yield outputs
        for out in outputs.values():
            out.commit()
    except BaseException:
        for out in outputs.values():
            out.abort()
        raise


def write_atomic(path: str, data: bytes | str) -> None:
    """Write a small file (JSON, Markdown) atomically."""
    with atomic_outputs([path]) as outputs:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:  # os.write may write less than asked
            view = view[os.write(outputs[path].fd, view) :]


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
