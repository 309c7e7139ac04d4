"""What reaches the terminal: a command's failure as one `llama2bin: error:` line and a non-zero
exit, and the library's notes and warnings (logged under the `llama2bin` logger) as lines.

A `Llama2binError` (bad input, refused conversion) or an `OSError` about a named file is the
expected kind. Anything else is a bug or a malformed value nobody validated yet; it still gets
one line (with its type, so it can be reported and found) instead of a traceback.

The library never prints to stderr itself: it logs notes (INFO: a group-size back-off, progress
lines in a log file, what a fetch reused) and warnings (WARNING). The CLI shows both, warnings
as `llama2bin: warning: ...`; a program embedding llama2bin decides for itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from ..errors import Llama2binError

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class _TerminalHandler(logging.Handler):
    """Log records as plain lines on the current sys.stderr (looked up per record, so a caller
    that swaps stderr, a test capturing it, sees them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            prefix = "llama2bin: warning: " if record.levelno >= logging.WARNING else ""
            print(prefix + text, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the command
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the library's notes (from `level` on) and warnings on stderr, once per process."""
    logger = logging.getLogger("llama2bin")
    logger.setLevel(level)
    if not any(isinstance(h, _TerminalHandler) for h in logger.handlers):
        logger.addHandler(_TerminalHandler())


def _escape_newlines(text: str) -> str:
    # A file name may hold a newline; the error must stay one line.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())  # an arbitrary exception's message: one line, bounded
    return text[:500] + ("…" if len(text) > 500 else "")


def _error(text: str) -> int:
    print(f"llama2bin: error: {text}", file=sys.stderr)
    return EXIT_FAILURE


class ErrorLineParser(argparse.ArgumentParser):
    """argparse, with its refusals in the one error format of every other failure (exit 2 kept)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.removeprefix("llama2bin").strip()  # subparsers are "llama2bin verify", ...
        self.exit(2, f"llama2bin: error: {command + ': ' if command else ''}{message}\n")


def run_reporting_errors(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand; turn every exception into one error line and an exit status."""
    try:
        return command(args)
    except Llama2binError as e:
        return _error(_escape_newlines(str(e)))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _error(_escape_newlines(f"{where}{e.strerror or e}"))
    except KeyboardInterrupt:
        print("llama2bin: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - last resort, never a traceback
        # RecursionError and MemoryError land here too: the type name stays in the line, so a
        # test that caps memory still sees which one it was.
        return _error(f"internal error: {type(e).__name__}: {_one_line(e)} (please report)")


__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "ErrorLineParser", "configure_logging", "run_reporting_errors"]
