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


def broadcast_shape(*shapes) -> torch.Size:
    """The shape ``shapes`` broadcast to (as ``torch.broadcast_shapes``, without its import cost)."""
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, d in enumerate(s, n - len(s)):
            if d != 1:
                out[i] = d
    return torch.Size(out)


def narrow_broadcast(t: torch.Tensor, event_dims: int = 0) -> torch.Tensor:
    """``t`` without its broadcast (stride-0) extent: such dims narrowed to size 1, a view.
    A prior ``log p(z)`` is often a ``(K, N)`` view of ``K`` numbers, a location ``locs[x]``
    expanded over sequences and steps ``K`` numbers whatever its shape. The last ``event_dims``
    dims keep their size."""
    for d, (n, st) in enumerate(zip(t.shape[:t.dim() - event_dims], t.stride())):
        if st == 0 and n > 1:
            t = t.narrow(d, 0, 1)
    return t


def sizes(tensors: Iterable[torch.Tensor]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for t in tensors:
        out.update(zip(dims_of(t), t.shape))
    return out


def _pack(value, dim_to_symbol: Dict[int, str]):
    """:func:`pyro.ops.packed.pack` (size-1 dims dropped, the rest named), without its per-call
    context manager."""
    if not isinstance(value, torch.Tensor):
        return value
    shift = value.dim()
    try:
        dims = "".join(dim_to_symbol[d - shift] for d, n in enumerate(value.shape) if n > 1)
    except KeyError:
        raise ValueError(f"Invalid tensor shape {tuple(value.shape)}: its dims are not among the plate and "
                         f"enumeration dims {sorted(dim_to_symbol)}; check the shapes of the model's sample "
                         "values and distribution parameters") from None
    out = value.squeeze()
    out._pyro_dims = dims
    return out


def pack_trace(trace) -> None:
    """``site["packed"]`` with the packed ``log_prob``, ``unscaled_log_prob`` and ``mask`` of every
    sample site, as :meth:`Trace.pack_tensors` makes them (its symbols, from
    :meth:`Trace.symbolize_dims`); a log-probability that is its own unscaled one is packed once."""
    trace.symbolize_dims()
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        dim_to_symbol = site["infer"]["_dim_to_symbol"]
        packed = site.setdefault("packed", {})
        try:
            packed["mask"] = _pack(site["mask"], dim_to_symbol)
            if "log_prob" in site:
                unscaled = _pack(site["unscaled_log_prob"], dim_to_symbol)
                packed["unscaled_log_prob"] = unscaled
                lp = site["log_prob"]
                packed["log_prob"] = unscaled if lp is site["unscaled_log_prob"] else _pack(lp, dim_to_symbol)
        except ValueError as e:
            shapes = trace.format_shapes(last_site=site["name"])
            raise ValueError(f"Error while packing tensors at site '{site['name']}':\n  {e}\n{shapes}") from e
