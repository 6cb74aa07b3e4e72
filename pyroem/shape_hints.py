"""One line added to Pyro's shape errors, naming the site, the shapes and the likely cause."""
from __future__ import annotations

import re
from typing import Optional

_PLATE = re.compile(r"Shape mismatch inside plate\('([^']+)'\) at site '?([^'\s]+?)'? dim (-?\d+), (\d+) vs (\d+)")
_VALUE = re.compile(r"at site '([^']+)'.*?not broadcastable with batch_shape\+event_shape: "
                    r"torch\.Size\((\[[^\]]*\])\) vs torch\.Size\((\[[^\]]*\])\)", re.S)
_SITE = re.compile(r"at site '([^']+)'")


_NAN = re.compile(r"at site '([^']+)'.*?found invalid values:.*?nan", re.S)


def shape_hint(err: BaseException) -> Optional[str]:
    """What a shape error (or NaN data) in a model run most likely means, or None for other errors."""
    msg = str(err)
    m = _NAN.search(msg)
    if m:
        return (f"pyroem: site '{m.group(1)}' observes NaN values. To leave them out of the likelihood "
                f"(integrated out where it factorizes over them), build EM(model, missing='marginalize')")
    m = _PLATE.search(msg)
    if m:
        plate, site, dim, size, got = m.groups()
        return (f"pyroem: at site '{site}', dim {dim} has size {got} where plate '{plate}' has {size}. If each "
                f"datum of '{site}' is a vector of {got} values, make them one event: dist.<...>.to_event(1); if "
                f"dim {dim} belongs to another plate, give that plate its own dim")
    m = _VALUE.search(msg)
    if m:
        site, value, shape = m.groups()
        return (f"pyroem: site '{site}' observes a value of shape {value} with a distribution of shape {shape}. If "
                f"the values are independent data points, put the site inside a plate over them (with "
                f"pyro.plate('data', N): ...); if they form one vector, give the distribution that event "
                f"shape with .to_event(1)")
    m = _SITE.search(msg)
    if m and ("shape" in msg.lower() or "broadcast" in msg.lower()):
        return (f"pyroem: a shape error at site '{m.group(1)}': check the plates around it (every data "
                f"dimension needs a pyro.plate) and its event shape (.to_event for vector-valued data)")
    return None


def add_shape_hint(err: BaseException) -> None:
    """Append :func:`shape_hint`'s line to ``err``'s message (as a note, Python >= 3.11)."""
    hint = shape_hint(err)
    if hint is not None and hasattr(err, "add_note") and hint not in getattr(err, "__notes__", ()):
        err.add_note(hint)
