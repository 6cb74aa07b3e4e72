"""Printing a benchmark's results: a Markdown table for the README, or aligned columns."""
from __future__ import annotations

from typing import Sequence


def print_table(head: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    """``head`` and ``rows`` (cells already formatted) as Markdown (a blank line first, ``|`` in
    cells escaped) or as left-aligned columns."""
    if markdown:
        def cells(r):
            return " | ".join(c.replace("|", "\\|") for c in r)
        print()
        print(f"| {cells(head)} |")
        print("|" + "---|" * len(head))
        for r in rows:
            print(f"| {cells(r)} |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
