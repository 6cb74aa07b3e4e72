"""``vectorized_markov``: a Markov chain written once for all time steps.

A ``pyro.markov`` loop records one sample site per step, so the cost of tracing a model grows
with the length of its chains. ``vectorized_markov`` runs the loop body ``history + 1 + history``
times whatever the length: the first ``history`` steps one by one (int indices), then the
rest of the chain as a plate over time, once per lag. With ``history=1``::

    x_prev = None
    for t in pyroem.vectorized_markov(name="time", size=T, dim=-1):
        x = pyro.sample(f"x_{t}", dist.Categorical(init if isinstance(t, int) else trans[x_prev]))
        pyro.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=y[t])
        x_prev = x

records ``x_0``/``y_0``, then ``x_slice(0, T-1, None)`` (the states before each later step, a
copy that is not scored) and ``x_slice(1, T, None)``/``y_slice(1, T, None)`` inside the plate
``"time"`` of size ``T - 1``. It is pyro.contrib.funsor's ``vectorized_markov`` protocol (same
indices, site names and ``markov_chain`` message), built on ``pyro.plate``, so it needs no
funsor and composes with the model's other plates; pyroem's E-step recognizes either and
eliminates the chain by a scan along time (:mod:`pyroem.chain_kernels`).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Union

import pyro
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import effectful


class TimeIndex(torch.Tensor):
    """The time indices of one lag of a vectorized chain (``arange(i, T - history + i)``) that
    format as their slice, so ``f"x_{t}"`` names a site ``x_slice(1, T, None)`` directly (no
    per-element formatting). Operations on it return plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    lag: slice

    def __format__(self, spec: str) -> str:
        return str(self.lag)


@effectful(type="markov_chain")
def _markov_chain(name=None, markov_vars=frozenset(), suffixes=()):
    """The chain's variables at each suffix, as pyro.contrib.funsor reports it."""
    return frozenset(tuple(f"{v}{s}" for s in suffixes) for v in markov_vars)


class VectorizedMarkov(Messenger):
    """Iterate over a chain in ``2·history + 1`` passes; see the module docstring.

    :param name: the chain's name, also the name of its time plate.
    :param size: the chain's length ``T`` (at least ``history`` and 1).
    :param dim: the time plate's dim (negative), as for ``pyro.plate``; None: the next free one.
    :param history: the chain's order: how many previous states each step depends on.
    """

    def __init__(self, name: str, size: int, dim: Optional[int] = None, history: int = 1) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"vectorized_markov: name must be a non-empty str, got {name!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"vectorized_markov: history must be an int >= 0, got {history!r}")
        size = int(size)
        if size < max(history, 1):
            raise ValueError(f"vectorized_markov '{name}': size must be at least max(history, 1)={max(history, 1)}, "
                             f"got {size}")
        super().__init__()
        self.name, self.size, self.dim, self.history = name, size, dim, history
        self._suffix: Union[int, slice, None] = None
        self._indices: Optional[torch.Tensor] = None
        self._suffixes: List[Union[int, slice]] = []
        self._markov_vars: set = set()

    def __iter__(self) -> Iterator[Union[int, torch.Tensor]]:
        self._suffixes, self._markov_vars = [], set()
        for i in range(self.history):
            self._suffix, self._indices = i, None
            self._suffixes.append(i)
            yield i
        steps = self.size - self.history
        if steps == 0:  # a chain no longer than its history: the first steps are all of it
            self._suffix = None
            _markov_chain(name=self.name, markov_vars=frozenset(), suffixes=list(self._suffixes))
            return
        lags = [slice(i, steps + i) for i in range(self.history + 1)]
        self._suffixes.extend(lags)
        with self, pyro.plate(self.name, steps, dim=self.dim) as idx:
            for i, lag in enumerate(lags):
                indices = (idx + i).as_subclass(TimeIndex)
                indices.lag = lag
                self._suffix, self._indices = lag, indices
                yield indices
        self._suffix = None
        _markov_chain(name=self.name, markov_vars=frozenset(self._markov_vars), suffixes=list(self._suffixes))

    def _pyro_sample(self, msg: dict) -> None:
        if not isinstance(self._suffix, slice) or type(msg["fn"]).__name__ == "_Subsample":
            return
        if not msg["name"].endswith(str(self._suffix)):
            plain = self._indices.as_subclass(torch.Tensor)
            index = next((i for i in (str(plain), str(self._indices)) if msg["name"].endswith(i)), None)
            if index is None:
                raise ValueError(
                    f"vectorized_markov '{self.name}': site '{msg['name']}' inside the chain must be "
                    "named after the loop index, e.g. pyro.sample(f\"x_{t}\", ...), so that its copies "
                    "at each lag can be told apart")
            # "x_tensor([1, 2, ...])" (str formatting) → "x_slice(1, T, None)"
            msg["name"] = msg["name"][: -len(index)] + str(self._suffix)
        if self._suffix != self._suffixes[-1]:
            # an earlier lag: the same variable shifted in time, recorded but not scored
            msg["infer"]["_do_not_score"] = True
            if not msg["is_observed"]:
                self._markov_vars.add(msg["name"][: -len(str(self._suffix))])


def vectorized_markov(name: str, size: int, dim: Optional[int] = None, history: int = 1) -> VectorizedMarkov:
    """A Markov chain over ``size`` steps whose later steps run as one plate over time.

    ``for t in vectorized_markov(name="time", size=T, dim=-1): ...`` yields ``0, …, history-1``
    and then, inside a plate of ``T - history`` steps, the index tensors of each lag
    (``arange(0, T-1)`` for the previous state, ``arange(1, T)`` for the current one when
    ``history=1``). Name sites after the index (``f"x_{t}"``). See :mod:`pyroem.markov`.
    """
    return VectorizedMarkov(name, size, dim, history)
