"""A tqdm bar on stderr for the fits when stderr is a terminal, fed by the estimators' callback."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Optional


def wanted() -> bool:
    """Show progress only to a person watching a terminal."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


@contextlib.contextmanager
def fit_progress(total: int, desc: str, enabled: Optional[bool] = None) -> Iterator[Optional[Callable]]:
    """Within the block, an estimator ``callback(n_iter, value, params)`` that draws a bar of
    ``total`` steps with the last change of ``value`` (a step numbered 1 starts the bar again:
    the next start of a multi-start fit); None when the bar is off."""
    enabled = wanted() if enabled is None else enabled
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, unit="step")
    last = []

    def step(n_iter: int, value: float, params=None) -> bool:
        if n_iter == 1:
            bar.reset()
            last.clear()
        if last:
            bar.set_postfix_str(f"change {value - last[-1]:.2e}", refresh=False)
        last[:] = [value]
        bar.update(n_iter - bar.n)
        return False

    try:
        yield step
    finally:
        bar.close()
