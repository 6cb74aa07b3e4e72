"""A tqdm bar for the fits when stderr is a terminal, fed by the estimators' own verbose lines."""
from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import Iterator, Optional

ITERATION = {
    # GaussianMixture(verbose=2, verbose_interval=1): "  Iteration 7\t ll change 0.00123"
    "gmm": re.compile(r"Iteration\s+(\d+)(?:\s+ll change\s+(\S+))?"),
    # hmm ConvergenceMonitor(verbose=True): "         7     -1234.56789012      +0.00123456"
    "hmm": re.compile(r"^\s*(\d+)\s+(\S+)\s+(\S+)\s*$"),
}


def wanted() -> bool:
    """Show progress only to a person watching a terminal."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class _BarWriter(io.TextIOBase):
    """A text stream that turns verbose iteration lines into bar updates and drops the rest."""

    def __init__(self, bar, pattern: "re.Pattern[str]") -> None:
        self.bar, self.pattern, self.pending = bar, pattern, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith("Initialization") and not line.rstrip().endswith("."):
                self.bar.reset()  # a new start of a multi-start fit
                continue
            m = self.pattern.search(line)
            if m:
                self.bar.update(int(m.group(1)) - self.bar.n)
                if m.lastindex and m.lastindex >= 2 and m.group(m.lastindex):
                    self.bar.set_postfix_str(f"change {m.group(m.lastindex)}", refresh=False)
                self.bar.refresh()
        return len(text)


@contextlib.contextmanager
def fit_progress(kind: str, total: int, desc: str, enabled: Optional[bool] = None) -> Iterator[bool]:
    """Within the block, stdout and stderr feed a bar (``kind`` names the line format); yields
    whether the bar is on, i.e. whether the estimator should be made verbose."""
    enabled = wanted() if enabled is None else enabled
    if not enabled:
        yield False
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, unit="step")
    writer = _BarWriter(bar, ITERATION[kind])
    try:
        with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
            yield True
    finally:
        bar.close()
