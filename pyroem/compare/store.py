"""Snapshots of the param store, so both methods start from the same parameters."""
from __future__ import annotations

from typing import Dict, List, Tuple

import pyro
import torch
from pyro.distributions import constraints
from torch.distributions import transform_to

from ..handlers import param_constraint, unconstrained

Snapshot = Dict[str, Tuple[torch.Tensor, constraints.Constraint]]


def snapshot_store() -> Snapshot:
    """Every param in the store: a copy of its unconstrained value, and its constraint."""
    store = pyro.get_param_store()
    return {name: (unconstrained(name).detach().clone(), param_constraint(name, store))
            for name in list(store.keys())}


def restore_store(snapshot: Snapshot) -> None:
    """Put the store back as it was at ``snapshot``: its values, and no param it did not hold."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n not in snapshot]:
        del store[name]
    with torch.no_grad():
        for name, (value, constraint) in snapshot.items():
            if name in store:
                current = unconstrained(name)
                if current.shape == value.shape and current.dtype == value.dtype:
                    current.copy_(value)
                    continue
                del store[name]
            store.setdefault(name, transform_to(constraint)(value), constraint=constraint)


def param_values(names: List[str]) -> Dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {name: store.get_param(name).detach().clone() for name in names}
