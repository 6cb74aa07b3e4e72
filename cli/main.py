"""Entry point of the ``pyroem`` command."""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    raise SystemExit("pyroem: no command yet")
