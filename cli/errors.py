"""The error type of the command line: a problem with the user's input or files."""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Iterator


class CliError(Exception):
    """Reported as one line ``pyroem: error: <message>``, exit status 1."""


@contextlib.contextmanager
def warnings_as_notes(stream=None) -> Iterator[None]:
    """Collect the warnings raised inside the block and print each once, after it, as
    ``pyroem: warning: <message>`` (no source lines), on ``stream`` (default: stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = set()
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in seen:
            seen.add(text)
            print(f"pyroem: warning: {text}", file=stream or sys.stderr)
