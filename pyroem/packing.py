"""Small helpers for Pyro's packed tensors (a tensor plus a ``_pyro_dims`` string, one symbol per dim)."""
from __future__ import annotations

from typing import Dict, Iterable

import torch


def dims_of(t: torch.Tensor) -> str:
    return getattr(t, "_pyro_dims", "")


def with_dims(t: torch.Tensor, dims: str) -> torch.Tensor:
    assert t.dim() == len(dims), (tuple(t.shape), dims)
    t._pyro_dims = dims
    return t


def align(t: torch.Tensor, dims: str, target: str) -> torch.Tensor:
    """View of ``t`` (with ``dims`` ⊆ ``target``) permuted and unsqueezed to broadcast against ``target``."""
    order = sorted(range(len(dims)), key=lambda i: target.index(dims[i]))
    t = t.permute(order) if order != list(range(len(dims))) else t
    shape = []
    present = {d: t.shape[i] for i, d in enumerate(dims[j] for j in order)}
    for d in target:
        shape.append(present.get(d, 1))
    return t.reshape(shape)


def reduce_to(t: torch.Tensor, dims: str, target: str) -> torch.Tensor:
    """Sum ``t`` over the dims not in ``target`` and order the rest as in ``target`` (⊆ ``dims``)."""
    drop = [i for i, d in enumerate(dims) if d not in target]
    if drop:
        t = t.sum(drop)
        dims = "".join(d for d in dims if d in target)
    missing = [d for d in target if d not in dims]
    assert not missing, (dims, target)
    if dims != target:
        t = t.permute([dims.index(d) for d in target])
    return t


def sizes(tensors: Iterable[torch.Tensor]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for t in tensors:
        out.update(zip(dims_of(t), t.shape))
    return out
