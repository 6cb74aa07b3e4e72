"""A Gaussian mixture's params in Pyro's param store, one fit's under one name prefix: written from
values (weights renormalized along their last dim, so one mixture or a batch), dropped after."""
from __future__ import annotations

from typing import Dict

import pyro
import torch
from pyro.distributions import constraints

from .densities import INV_SCALE_CONSTRAINTS

PARAM_NAMES = ("weights", "means", "inv_scale")


def write_params(prefix: str, params: Dict[str, torch.Tensor], covariance_type: str) -> None:
    """``prefix + {weights, means, inv_scale}`` set to copies of ``params``' values."""
    store = pyro.get_param_store()
    cons = {"weights": constraints.simplex, "means": constraints.real,
            "inv_scale": INV_SCALE_CONSTRAINTS[covariance_type]}
    for name in PARAM_NAMES:
        full = prefix + name
        value = params[name].detach().clone()
        if name == "weights":
            value = value / value.sum(-1, keepdim=True)
        if full in store:
            del store[full]
        store.setdefault(full, value, constraint=cons[name])


def drop_params(prefix: str) -> None:
    """Remove ``prefix``'s params from the store."""
    store = pyro.get_param_store()
    for name in PARAM_NAMES:
        if prefix + name in store:
            del store[prefix + name]
