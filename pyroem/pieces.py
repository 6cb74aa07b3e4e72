"""Data in pieces: ``EM.fit(data=...)`` runs the E-step piece by piece and sums the statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch

from .arguments import as_tensor

Arguments = Tuple[tuple, Dict[str, Any]]


def _tensor(value: Any) -> Any:
    """NumPy arrays (memory maps included) and pandas objects become tensors (:func:`as_tensor`)."""
    return as_tensor(value)


class DataPieces:
    """The pieces of the data of one fit, re-iterable: every pass over them is one E-step.

    Each item of ``data`` gives one piece's leading arguments — a tuple or list of them (what a
    ``torch.utils.data.DataLoader`` yields), a dict of keyword arguments, or a single tensor —
    which come before the ``args`` and ``kwargs`` shared by every piece.
    """

    def __init__(self, data: Iterable, args: tuple, kwargs: Dict[str, Any]) -> None:
        if isinstance(data, (torch.Tensor, np.ndarray)):
            raise ValueError("data must be an iterable of pieces (a list of tensors, torch.split(y, n), a "
                             "DataLoader), not one array: pass all of the data at once as EM(model).fit(y)")
        try:
            it = iter(data)
        except TypeError:
            raise ValueError(f"data must be an iterable of pieces (a list, a DataLoader), got "
                             f"{type(data).__name__}") from None
        if it is data:
            raise ValueError("data must be re-iterable (a list, a tuple, a DataLoader): every EM step reads all "
                             "of it again, and a generator or iterator is used up after one pass")
        self.data, self.args, self.kwargs = data, args, kwargs

    def __iter__(self) -> Iterator[Arguments]:
        empty = True
        for item in self.data:
            empty = False
            if isinstance(item, Mapping):
                yield self.args, {**{k: _tensor(v) for k, v in item.items()}, **self.kwargs}
            elif isinstance(item, (tuple, list)):
                yield tuple(_tensor(v) for v in item) + self.args, self.kwargs
            else:
                yield (_tensor(item),) + self.args, self.kwargs
        if empty:
            raise ValueError("data has no pieces: EM.fit(data=...) needs at least one")

    def count(self) -> Optional[int]:
        """The number of pieces, where the data says (a list, a DataLoader); else None."""
        try:
            return len(self.data)
        except TypeError:
            return None

    def first(self) -> Arguments:
        """The arguments of the first piece (what the model is probed with)."""
        return next(iter(self))


class Batches:
    """In-memory arguments read in batches of ``batch_size`` rows: every tensor argument whose
    first dimension has the length of the first tensor argument is split along it (the rest are
    passed whole); ``shuffle`` draws a new order of the rows (torch's RNG) at every pass."""

    def __init__(self, args: tuple, kwargs: Dict[str, Any], batch_size: int, shuffle: bool) -> None:
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0]
        if not tensors:
            raise ValueError("batch_size splits the model's tensor arguments along their first dimension, "
                             "but the fit got no tensor argument")
        self.n = tensors[0].shape[0]
        self.args, self.kwargs, self.batch_size, self.shuffle = args, kwargs, batch_size, shuffle
        self.data = range(0, self.n, batch_size)  # one entry per batch, for count()

    def _split(self, value: Any, rows) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.n:
            return value[rows if isinstance(rows, slice) else rows.to(value.device)]
        return value

    def __iter__(self) -> Iterator[Arguments]:
        order = torch.randperm(self.n) if self.shuffle else None
        for start in range(0, self.n, self.batch_size):
            rows = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            yield (tuple(self._split(a, rows) for a in self.args),
                   {k: self._split(v, rows) for k, v in self.kwargs.items()})

    def count(self) -> int:
        return len(self.data)

    def first(self) -> Arguments:
        return next(iter(self))


@dataclass
class PassStatistics:
    """One pass over the pieces: the statistics summed over them (``"log_likelihood"`` included,
    float64) and the arguments of the last piece, which ``solve`` gets."""

    stats: Dict[str, torch.Tensor]
    dtype: torch.dtype
    args: tuple
    kwargs: Dict[str, Any]

    def log_likelihood_value(self) -> float:
        """``log p(y|θ)`` of all the pieces, as a Python float."""
        return float(self.stats["log_likelihood"])

    @property
    def log_likelihood(self) -> torch.Tensor:
        """The total in the pieces' float type (whose rounding the monotonicity checks allow for)."""
        return self.stats["log_likelihood"].to(self.dtype)
