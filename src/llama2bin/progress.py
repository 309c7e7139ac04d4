"""Progress for long runs: a tqdm bar on a terminal, plain periodic lines (logged notes) in a log file."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "B", quiet: bool = False):
        self.total = max(total, 1)
        self.desc = desc
        self.done = 0
        self.quiet = quiet
        self._bar = None
        self._next_pct = 10
        self._start = time.monotonic()
        if not quiet and sys.stderr.isatty():
            # imported here: tqdm's import reads every installed package's metadata (~35 ms), a cost
            # each pipeline job (output to a log file, no bar) would pay for nothing
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.quiet:
            pct = 100 * self.done // self.total
            if pct >= self._next_pct:
                elapsed = time.monotonic() - self._start
                log.info(f"{self.desc}: {pct}% ({elapsed:.1f} s)")
                self._next_pct = (pct // 10 + 1) * 10

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
