"""How a command's failure reaches the user: one `llama2bin: error:` line and a non-zero exit.

A `Llama2binError` (bad input, refused conversion) or an `OSError` about a named file is the
expected kind. Anything else is a bug or a malformed value nobody validated yet; it still gets
one line (with its type, so it can be reported and found) instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from ..errors import Llama2binError

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


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


__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "ErrorLineParser", "run_reporting_errors"]
